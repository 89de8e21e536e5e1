"""The console's pages: server-rendered HTML with plain forms, served by the gateway itself.

No script framework and no CDN: the gateway runs in closed networks, and every page
must work from what the gateway serves (templates and ``static/`` are package data).
Forms post back; a page that changes something (replay, send again, map again) first
shows a preview of what it will do and asks again.

Every request is checked here, not in the templates: the role (a viewer's POST is
refused even though the page shows it no button), the CSRF token of the session on
every POST, and the Origin when the browser sends one. Every action, and every refusal
of one, goes to the operator audit with who, what, when and from where.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Request
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from adapters.console import labels, system
from adapters.console.operators import ConsoleSettings, OperatorsFile, Role, check_password
from adapters.hl7v2.lab_intake import KEPT_NS, kept_message, parse_for_cli
from adapters.hl7v2.oru import LAB_RESULT_NS, MappingGaps, map_message, message_id_for
from adapters.mapping.lab_mapping import LabMapping
from gateway.config import GatewayConfig
from gateway.journal import Journal, MessageRecord, Status, utcnow
from gateway.journal import search as s
from gateway.masking import mask_text, mask_value
from routing.replay import prune_dead_queue, replay
from routing.topology import Topology
from zdravlink.errors import Interrupt, RefusedError

log = logging.getLogger("zdravlink.console")

PREFIX = "/console"
SESSION_COOKIE = "zl_session"
LOGIN_CSRF_COOKIE = "zl_login_csrf"
LANG_COOKIE = "zl_lang"
MAX_FORM_BYTES = 256 * 1024
PAGE = 50
#: Trail events that are a delivery attempt or its outcome: the "attempts and answers" table.
ATTEMPT_EVENTS = ("DELIVERY_FAILED", "DELIVERED", "RETRY_SCHEDULED", "FAILOVER", "CIRCUIT_OPEN", "DEAD",
                  "AWAITING_PICKUP", "PICKED_UP", "ACKED")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make the browser send "Origin: null" on our own forms
    "Cache-Control": "no-store",
}

#: Maps kept lab messages again with the current mapping files (``adapters.hl7v2.lab_intake.replay_kept``).
Remap = Callable[[list[MessageRecord]], list[tuple[str, Any]]]


class Refused(RefusedError):
    """A request the console turns down: shown as a page with ``status``, audited by whoever raised it."""

    def __init__(self, status: int, key: str, detail: str = "") -> None:
        super().__init__(detail or key)
        self.status, self.key, self.detail = status, key, detail


class SignIn(Interrupt):
    """No session: the browser is sent to the sign-in page."""


@dataclass(frozen=True)
class Who:
    """The operator behind a request, with the session's CSRF token and where the request came from."""

    name: str
    role: Role
    csrf: str
    remote: str | None

    @property
    def actor(self) -> str:
        return f"console:{self.name}"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Refused(400, "bad_input", f"{field}: not a date or date-time (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _minutes(value: str, field: str) -> timedelta | None:
    if not value.strip():
        return None
    try:
        minutes = float(value)
    except ValueError:
        raise Refused(400, "bad_input", f"{field}: a number of minutes") from None
    if not 0 <= minutes <= 10 ** 7:
        raise Refused(400, "bad_input", f"{field}: between 0 and 10000000 minutes")
    return timedelta(minutes=minutes)


def masked_envelope(envelope: bytes) -> str:
    """The envelope with every value of its payload masked, for viewers; names and the header stay."""
    root = etree.fromstring(envelope)
    for content in root.iter("{*}MessagePrimaryContent"):
        for el in content.iter():
            if isinstance(el.tag, str):
                if el.text and el.text.strip():
                    el.text = mask_value(el.text.strip())
                for key, value in el.attrib.items():
                    el.set(key, mask_value(value))
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _pretty(envelope: bytes) -> str:
    return etree.tostring(etree.fromstring(envelope), pretty_print=True, encoding="unicode")


def _masked_detail(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {k: _masked_detail(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_masked_detail(v) for v in detail]
    return mask_text(detail) if isinstance(detail, str) else detail


class Console:
    """The console's routes, bound to one gateway's configuration and journal."""

    def __init__(self, config: GatewayConfig, journal: Journal, operators: OperatorsFile,
                 mappings: dict[str, LabMapping], remap: Remap | None = None) -> None:
        self.config = config
        self.journal = journal
        self.operators = operators
        self.settings: ConsoleSettings = operators.console
        self.mappings = mappings
        self.remap = remap
        self.topology = Topology.of(config.settings.broker)
        self.env = Environment(loader=PackageLoader("adapters.console", "templates"),
                               autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
        self.env.filters["when"] = lambda d: d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if d else ""
        self.env.filters["short_type"] = lambda t: t.removeprefix("urn://zdravlink/types/")
        self.router = self._routes()

    def mount(self, app: FastAPI) -> None:
        """Add the console's routes, its static files and its two exception pages to the gateway's app."""
        app.include_router(self.router)
        app.mount(f"{PREFIX}/static", StaticFiles(directory=Path(__file__).with_name("static")), name="console-static")
        app.add_exception_handler(Refused, self._refused_page)  # type: ignore[arg-type]
        app.add_exception_handler(SignIn, lambda request, _exc: self._to_login(request))  # type: ignore[arg-type]

    # ---- who is asking ------------------------------------------------------

    def _remote(self, request: Request) -> str | None:
        host = request.client.host if request.client else None
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded and self.settings.is_trusted_proxy(host):
            return forwarded.split(",")[0].strip()[:64]
        return host

    def _who(self, request: Request, need: Role = Role.viewer) -> Who:
        token = request.cookies.get(SESSION_COOKIE)
        session = s.session_get(self.journal, _sha(token)) if token else None
        remote = self._remote(request)
        if session is None:
            raise SignIn()
        operator = self.operators.find(session.operator)
        if operator is None:  # removed from operators.yaml since: the session ends with it
            s.session_close(self.journal, _sha(token or ""))
            raise SignIn()
        who = Who(operator.name, operator.level, session.csrf, remote)
        if who.role < need:
            self.audit(who, "forbidden", target=request.url.path, outcome="refused",
                       detail={"method": request.method, "needs": need.name})
            raise Refused(403, "forbidden", f"{request.method} {request.url.path} needs the role {need.name}")
        return who

    async def _post(self, request: Request, need: Role) -> tuple[Who, dict[str, list[str]]]:
        """The session, role, Origin and CSRF token of a POST, and its form; any failure is audited and refused."""
        who = self._who(request, need)
        form = await self._form(request)
        origin = request.headers.get("origin")
        same_origin = origin is None or urlsplit(origin).netloc == request.url.netloc
        sent = (form.get("csrf") or [""])[0]
        if not same_origin or not sent or not hmac.compare_digest(sent, who.csrf):
            self.audit(who, "csrf_refused", target=request.url.path, outcome="refused",
                       detail={"origin": origin, "token_sent": bool(sent)})
            raise Refused(403, "forbidden", "the form's CSRF token is missing or wrong; reload the page and try again")
        return who, form

    @staticmethod
    async def _form(request: Request) -> dict[str, list[str]]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, "bad_input", f"the form is larger than {MAX_FORM_BYTES} bytes")
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

    def audit(self, who: Who | None, action: str, *, target: str | None = None, outcome: str = "ok",
              detail: dict[str, Any] | None = None, name: str | None = None, remote: str | None = None) -> None:
        s.audit(self.journal, who.name if who else (name or "anonymous"), who.role.name if who else "-", action,
                target=target, outcome=outcome, detail=detail, remote=who.remote if who else remote)

    # ---- rendering ----------------------------------------------------------

    @staticmethod
    def _lang(request: Request) -> str:
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        if chosen in labels.LANGUAGES:
            return chosen
        return "en" if request.headers.get("accept-language", "").lower().startswith("en") else "ru"

    def render(self, request: Request, template: str, who: Who | None, status: int = 200, **context: Any) -> Response:
        lang = self._lang(request)
        other = "en" if lang == "ru" else "ru"
        query = dict(request.query_params)
        query["lang"] = other
        html = self.env.get_template(template).render(
            t=lambda key: labels.label(key, lang), lang=lang, who=who, path=request.url.path,
            switch_lang=f"{request.url.path}?{urlencode(query)}", prefix=PREFIX, Role=Role, **context)
        response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
        if request.query_params.get("lang") in labels.LANGUAGES:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path=PREFIX, samesite="strict",
                                secure=self.settings.secure_cookies)
        return response

    async def _refused_page(self, request: Request, exc: Refused) -> Response:
        who = None
        try:
            who = self._who(request)
        except (SignIn, Refused):
            pass
        if exc.key == "bad_input" and who is not None:
            self.audit(who, "bad_input", target=request.url.path, outcome="refused",
                       detail={"error": mask_text(exc.detail), "query": mask_text(str(request.url.query))[:500]})
        return self.render(request, "error.html", who, status=exc.status, error_key=exc.key, detail=exc.detail)

    def _to_login(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/login?{urlencode({'next': request.url.path})}", status_code=303)

    # ---- routes -------------------------------------------------------------

    def _routes(self) -> APIRouter:
        r = APIRouter(prefix=PREFIX, include_in_schema=False)
        self._session_routes(r)
        self._message_routes(r)
        self._letter_routes(r)
        self._lab_routes(r)
        self._overview_routes(r)
        return r

    def _session_routes(self, r: APIRouter) -> None:
        """Sign-in and sign-out, and the console's front door."""

        @r.get("")
        @r.get("/")
        def home() -> Response:
            return RedirectResponse(f"{PREFIX}/messages", status_code=303)

        @r.get("/login")
        def login_page(request: Request) -> Response:
            sso = self._sso(request)
            if sso is not None:
                return sso
            return self._login_form(request)

        @r.post("/login")
        async def login(request: Request) -> Response:
            form = await self._form(request)
            name = (form.get("name") or [""])[0].strip()[:64]
            password = (form.get("password") or [""])[0]
            remote = self._remote(request)
            sent, cookie = (form.get("csrf") or [""])[0], request.cookies.get(LOGIN_CSRF_COOKIE, "")
            if not sent or not cookie or not hmac.compare_digest(sent, cookie):
                self.audit(None, "login", name=name, remote=remote, outcome="refused", detail={"why": "csrf"})
                raise Refused(403, "forbidden", "the sign-in form's CSRF token is missing or wrong; reload the page")
            window = utcnow() - timedelta(minutes=self.settings.login_window_minutes)
            failures = await run_in_threadpool(s.recent_failures, self.journal, "login", remote or "", window)
            if failures >= self.settings.login_attempts:
                self.audit(None, "login", name=name, remote=remote, outcome="throttled",
                           detail={"failures": failures})
                return self._login_form(request, error="login_throttled", status=429)
            operator = self.operators.find(name)
            if not await run_in_threadpool(check_password, operator, password) or operator is None:
                self.audit(None, "login", name=name, remote=remote, outcome="refused", detail={"why": "password"})
                return self._login_form(request, error="login_failed", status=401)
            nxt = (form.get("next") or [""])[0]
            return self._start_session(request, operator.name, operator.role, remote, via="password",
                                       to=nxt if nxt.startswith(PREFIX + "/") else f"{PREFIX}/messages")

        @r.post("/logout")
        async def logout(request: Request) -> Response:
            who, _ = await self._post(request, Role.viewer)
            s.session_close(self.journal, _sha(request.cookies.get(SESSION_COOKIE, "")))
            self.audit(who, "logout")
            response = RedirectResponse(f"{PREFIX}/login", status_code=303)
            response.delete_cookie(SESSION_COOKIE, path=PREFIX)
            return response

    def _message_routes(self, r: APIRouter) -> None:
        """Search, CSV export and one message with its trail, attempts and relatives."""

        @r.get("/messages")
        def messages(request: Request) -> Response:
            who = self._who(request)
            q = request.query_params
            f = self._filter(q)
            newest = q.get("order", "newest") != "oldest"
            cursor = q.get("after") or None
            try:
                page = s.search(self.journal, f, newest_first=newest, cursor=cursor, limit=PAGE)
            except ValueError:
                raise Refused(400, "bad_input", "after: not a page cursor of this list") from None
            count, more = s.count_upto(self.journal, f)
            base = {k: v for k, v in q.items() if k not in ("after", "lang") and v}
            return self.render(request, "messages.html", who, q=q, page=self._shown(page.rows, who), count=count,
                               more=more, statuses=[st.value for st in Status], participants=sorted(
                                   self.config.participants), routes=sorted(r.name for r in self.config.routes),
                               types=sorted({r.message_type for r in self.config.routes}),
                               next_url=f"?{urlencode({**base, 'after': page.next_cursor})}" if page.next_cursor
                               else None, first_url=f"?{urlencode(base)}", csv_url=f"messages.csv?{urlencode(base)}")

        @r.get("/messages.csv")
        def messages_csv(request: Request) -> Response:
            who = self._who(request)
            f = self._filter(request.query_params)
            newest = request.query_params.get("order", "newest") != "oldest"
            self.audit(who, "export_csv", detail={"filter": mask_text(str(request.url.query))[:500]})
            return StreamingResponse(self._csv(s.iterate(self.journal, f, newest_first=newest), who),
                                     media_type="text/csv; charset=utf-8", headers={
                                         **_SECURITY_HEADERS,
                                         "Content-Disposition": 'attachment; filename="zdravlink-messages.csv"'})

        @r.get("/messages/{message_id}")
        def message(message_id: str, request: Request) -> Response:
            who = self._who(request)
            rec = self.journal.get(message_id.strip().lower())
            if rec is None:
                raise Refused(404, "not_found", f"no message {message_id[:64]}")
            trail = self.journal.trail(rec.message_id)
            if who.role < Role.operator:
                trail = [e.__class__(e.at, e.status, e.kind, e.actor, _masked_detail(e.detail), e.hash, e.prev_hash)
                         for e in trail]
            envelope = None
            if request.query_params.get("envelope"):
                full = who.role >= Role.operator
                envelope = _pretty(rec.envelope) if full else masked_envelope(rec.envelope)
                self.audit(who, "view_payload", target=rec.message_id, detail={"masked": not full})
            return self.render(request, "message.html", who, rec=rec, trail=trail,
                               intact=self.journal.verify_trail(rec.message_id),
                               attempts=[e for e in trail if e.kind in ATTEMPT_EVENTS],
                               related=s.related(self.journal, rec.message_id, rec.reference_id),
                               envelope=envelope, last_error=self._error_for(rec.last_error, who),
                               replayable=rec.status in (Status.DEAD.value, Status.FAILED.value),
                               kept=rec.message_type == KEPT_NS and rec.status == Status.REJECTED.value)

    def _letter_routes(self, r: APIRouter) -> None:
        """Dead letters and stuck messages: the lists, the preview and the replay or resend."""

        @r.get("/dead")
        def dead(request: Request) -> Response:
            return self._bulk_list(request, "dead")

        @r.get("/stuck")
        def stuck(request: Request) -> Response:
            return self._bulk_list(request, "stuck")

        @r.post("/{kind}/preview")
        async def bulk_preview(kind: str, request: Request) -> Response:
            who, form = await self._post(request, Role.operator)
            ids, f = self._bulk_selection(kind, form)
            per_recipient = self._recipients(ids, f)
            if not per_recipient:
                raise Refused(400, "bad_input", "nothing selected that can be sent: choose messages or a filter")
            return self.render(request, "preview.html", who, kind=kind, per_recipient=per_recipient,
                               total=sum(per_recipient.values()), form=form, ids=ids)

        @r.post("/{kind}/run")
        async def bulk_run(kind: str, request: Request) -> Response:
            who, form = await self._post(request, Role.operator)
            ids, f = self._bulk_selection(kind, form)
            chosen: Iterator[str] = iter(ids) if ids is not None else (row.message_id for row in s.iterate(
                self.journal, f, newest_first=False))
            done = await run_in_threadpool(self._run_bulk, kind, who, chosen)
            self.audit(who, "replay" if kind == "dead" else "send_again",
                       detail={"scope": "selected" if ids is not None else "filter",
                               "filter": {k: v[0] for k, v in form.items() if k not in ("csrf", "id") and v[0]},
                               "done": sum(ok for _, ok, _ in done), "skipped": sum(not ok for _, ok, _ in done),
                               "messages": [mid for mid, _, _ in done][:200]})
            return self.render(request, "done.html", who, kind=kind, done=done)

    def _lab_routes(self, r: APIRouter) -> None:
        """A lab's traffic, its unmapped codes, and mapping kept messages again."""

        @r.get("/labs")
        def labs(request: Request) -> Response:
            who = self._who(request)
            since = utcnow() - timedelta(days=14)
            overview = []
            for lab, mapping in sorted(self.mappings.items()):
                kept = s.kept_messages(self.journal, lab, KEPT_NS)
                overview.append({"lab": lab, "days": s.lab_activity(self.journal, lab, LAB_RESULT_NS, since),
                                 "kept": kept, "unmapped": self._unmapped(kept, mapping)})
            return self.render(request, "labs.html", who, overview=overview, can_remap=self.remap is not None)

        @r.post("/labs/remap")
        async def remap(request: Request) -> Response:
            who, form = await self._post(request, Role.operator)
            if self.remap is None:
                raise Refused(400, "bad_input", "no lab mappings are loaded in this gateway")
            ids = [i.strip().lower() for i in form.get("id", []) if i.strip()][:1000]
            records = [rec for rec in self.journal.get_many(ids).values()
                       if rec.message_type == KEPT_NS and rec.status == Status.REJECTED.value]
            if not records:
                raise Refused(400, "bad_input", "choose kept messages to map again")
            results = await run_in_threadpool(self.remap, records)
            self.audit(who, "remap", detail={"messages": [mid for mid, _ in results][:200],
                                             "mapped": sum(o.code == "AA" for _, o in results)})
            return self.render(request, "remapped.html", who, results=results)

    def _overview_routes(self, r: APIRouter) -> None:
        """Acts, registry requests, the system at a glance, and the operator audit."""

        @r.get("/acts")
        def acts_page(request: Request) -> Response:
            who = self._who(request)
            return self.render(request, "acts.html", who, acts=s.acts_summary(self.journal))

        @r.get("/registry")
        def registry_page(request: Request) -> Response:
            who = self._who(request)
            return self.render(request, "registry.html", who, summary=s.registry_summary(self.journal))

        @r.get("/system")
        def system_page(request: Request) -> Response:
            who = self._who(request)
            found = system.queues(self.config)
            admin = who.role >= Role.admin
            problems, summary = system.check_config(self.config.directory) if admin else ([], "")
            return self.render(request, "system.html", who, queues=found, workers=system.workers(self.config, found),
                               breakers=system.breakers(), in_flight=self.journal.in_flight_summary(),
                               relay_lag=s.relay_lag_seconds(self.journal), size=s.journal_size(self.journal),
                               dead=self.journal.count(Status.DEAD), admin=admin, config=self.config,
                               problems=problems, summary=summary)

        @r.get("/audit")
        def audit_page(request: Request) -> Response:
            who = self._who(request, Role.admin)
            q = request.query_params
            before = q.get("before")
            if before is not None and not before.isdigit():
                raise Refused(400, "bad_input", "before: an audit entry number")
            rows, more = s.audit_rows(self.journal, operator=q.get("operator") or None, action=q.get("action") or None,
                                      before_id=int(before) if before else None)
            base = {k: v for k, v in q.items() if k in ("operator", "action") and v}
            return self.render(request, "audit.html", who, rows=rows, q=q,
                               next_url=f"?{urlencode({**base, 'before': more})}" if more else None)

    # ---- sign-in ------------------------------------------------------------

    def _login_form(self, request: Request, error: str | None = None, status: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        response = self.render(request, "login.html", None, status=status, error=error, csrf=token,
                               next=request.query_params.get("next", ""))
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path=f"{PREFIX}/login",
                            secure=self.settings.secure_cookies)
        return response

    def _sso(self, request: Request) -> Response | None:
        """Sign in by the SSO proxy's header, when it comes from the proxy and names a listed operator."""
        header = self.settings.trusted_header
        host = request.client.host if request.client else None
        if not header or not self.settings.is_trusted_proxy(host) or not request.headers.get(header):
            return None
        name = request.headers[header].strip()[:64]
        operator = self.operators.find(name)
        if operator is None:
            self.audit(None, "login", name=name, remote=self._remote(request), outcome="refused",
                       detail={"via": "header", "why": "not an operator"})
            raise Refused(403, "forbidden", f"{name!r} is not listed in operators.yaml")
        nxt = request.query_params.get("next", "")
        return self._start_session(request, operator.name, operator.role, self._remote(request), via="header",
                                   to=nxt if nxt.startswith(PREFIX + "/") else f"{PREFIX}/messages")

    def _start_session(self, request: Request, name: str, role: str, remote: str | None, via: str,
                       to: str) -> Response:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        s.session_open(self.journal, _sha(token), name, role, csrf,
                       timedelta(minutes=self.settings.session_minutes), remote)
        s.audit(self.journal, name, role, "login", detail={"via": via}, remote=remote)
        response = RedirectResponse(to, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path=PREFIX,
                            secure=self.settings.secure_cookies, max_age=self.settings.session_minutes * 60)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
        return response

    # ---- messages -----------------------------------------------------------

    def _filter(self, q: Any) -> s.MessageFilter:
        """The search form as a filter; a value that cannot be one is refused with its field named."""
        status = q.get("status") or ""
        if status and status not in {st.value for st in Status}:
            raise Refused(400, "bad_input", f"status: not one of {', '.join(st.value for st in Status)}")
        since = _parse_time(q["since"], "since") if q.get("since") else None
        until = _parse_time(q["until"], "until") if q.get("until") else None
        msh10 = (q.get("msh10") or "").strip()
        for key in ("message_id", "sender", "recipient", "route", "result_id", "msh10"):
            if len(q.get(key) or "") > 255:
                raise Refused(400, "bad_input", f"{key}: longer than 255 characters")
        return s.MessageFilter(
            message_id=q.get("message_id") or None, sender=q.get("sender") or None,
            recipient=q.get("recipient") or None, message_type=q.get("message_type") or None,
            route=q.get("route") or None, statuses=(status,) if status else (), since=since, until=until,
            result_id=(q.get("result_id") or "").strip() or None,
            message_ids=tuple(message_id_for(lab, msh10) for lab in self.mappings) if msh10 else None)

    def _error_for(self, error: str | None, who: Who) -> str | None:
        return error if error is None or who.role >= Role.operator else mask_text(error)

    def _shown(self, rows: Sequence[s.Row], who: Who) -> list[s.Row]:
        if who.role >= Role.operator:
            return list(rows)
        return [row.__class__(**{**row.__dict__, "last_error": self._error_for(row.last_error, who)}) for row in rows]

    def _csv(self, rows: Iterator[s.Row], who: Who) -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["message_id", "created_at", "updated_at", "status", "sender", "recipient", "message_type",
                         "route", "channel", "attempts", "replays", "reference_id", "last_error"])
        for n, row in enumerate(rows, 1):
            writer.writerow([row.message_id, row.created_at.isoformat(), row.updated_at.isoformat(), row.status,
                             row.sender, row.recipient, row.message_type, row.route or "", row.channel or "",
                             row.attempts, row.replays, row.reference_id or "",
                             self._error_for(row.last_error, who) or ""])
            if n % 500 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    # ---- dead letters and stuck messages ------------------------------------

    def _bulk_filter(self, kind: str, q: Any) -> s.MessageFilter:
        if kind not in ("dead", "stuck"):
            raise Refused(404, "not_found", f"no list {kind!r}")
        narrow = {"route": q.get("route") or None, "recipient": q.get("recipient") or None}
        if kind == "dead":
            return s.dead_letters(reason=(q.get("reason") or "").strip() or None,
                                  older_than=_minutes(q.get("older_than") or "", "older_than"), **narrow)
        default = timedelta(seconds=self.config.settings.reconciler.stuck_after_seconds)
        return s.stuck(_minutes(q.get("older_than") or "", "older_than") or default, **narrow)

    def _bulk_list(self, request: Request, kind: str) -> Response:
        who = self._who(request)
        q = request.query_params
        f = self._bulk_filter(kind, q)
        try:
            page = s.search(self.journal, f, newest_first=False, cursor=q.get("after") or None, limit=PAGE)
        except ValueError:
            raise Refused(400, "bad_input", "after: not a page cursor of this list") from None
        count, more = s.count_upto(self.journal, f)
        base = {k: v for k, v in q.items() if k not in ("after", "lang") and v}
        return self.render(request, "bulk.html", who, kind=kind, q=q, page=self._shown(page.rows, who), count=count,
                           more=more, participants=sorted(self.config.participants),
                           routes=sorted(r.name for r in self.config.routes),
                           next_url=f"?{urlencode({**base, 'after': page.next_cursor})}" if page.next_cursor else None,
                           can_act=who.role >= Role.operator, filter_fields=base)

    def _bulk_selection(self, kind: str, form: dict[str, list[str]]) -> tuple[list[str] | None, s.MessageFilter]:
        """Either the ticked messages (``scope=selected``) or everything the filter selects (``scope=filter``)."""
        first = {k: v[0] for k, v in form.items() if v}
        f = self._bulk_filter(kind, first)
        if first.get("scope") == "filter":
            return None, f
        ids = list(dict.fromkeys(i.strip().lower() for i in form.get("id", []) if i.strip()))[:5000]
        return ids, f

    def _recipients(self, ids: list[str] | None, f: s.MessageFilter) -> dict[str, int]:
        if ids is None:
            return s.preview(self.journal, f)
        counts: dict[str, int] = {}
        allowed = set(f.statuses)
        for rec in self.journal.get_many(ids).values():
            if rec.status in allowed:
                counts[rec.recipient] = counts.get(rec.recipient, 0) + 1
        return dict(sorted(counts.items()))

    def _run_bulk(self, kind: str, who: Who, ids: Iterator[str]) -> list[tuple[str, bool, str]]:
        if kind == "dead":
            done = [(r.message_id, r.replayed, r.reason) for r in replay(self.journal, ids, actor=who.actor)]
            if any(ok for _, ok, _ in done):
                try:  # tidying only: a stale copy left in the queue is dropped by its generation anyway
                    prune_dead_queue(self.config.settings.broker.nodes, self.topology, self.journal)
                except Exception:
                    log.warning("replayed, but the dead letter queue was not pruned", exc_info=True)
            return done
        out = []
        stuck_statuses = {st.value for st in s.STUCK_STATUSES}
        for mid in ids:
            rec = self.journal.get(mid)
            if rec is None or rec.status not in stuck_statuses:
                out.append((mid, False, f"status is {rec.status if rec else 'unknown'}; not in flight"))
                continue
            sent = self.journal.send_round_again(rec, who.actor, {"reason": "operator", "operator": who.name})
            out.append((mid, sent, f"was {rec.status}" if sent else "it moved meanwhile"))
        return out

    # ---- labs ---------------------------------------------------------------

    def _unmapped(self, kept: Sequence[s.Row], mapping: LabMapping) -> list[tuple[str, str, int]]:
        """(gap code, lab code, messages) for codes and units the current mapping still lacks, most seen first.

        Found by mapping each kept message again without sending it, so the list is what
        the mapping lacks now: a code added to the file leaves the list at once.
        """
        counts: dict[tuple[str, str], int] = {}
        for rec in self.journal.get_many([row.message_id for row in kept]).values():
            try:
                map_message(parse_for_cli(kept_message(rec) or b""), mapping)
            except MappingGaps as exc:
                for gap in exc.gaps:
                    if gap.code in ("UNMAPPED_TEST_CODE", "UNMAPPED_UNIT"):
                        key = (gap.code, gap.lab_code or "")
                        counts[key] = counts.get(key, 0) + 1
            except Exception:
                log.debug("kept message %s does not parse", rec.message_id, exc_info=True)
        return sorted(((c, lc, n) for (c, lc), n in counts.items()), key=lambda x: (-x[2], x[0], x[1]))

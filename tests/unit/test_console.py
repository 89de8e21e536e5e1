"""The console's rules, request by request: sign-in, roles, CSRF, masking, bad input, the audit of each.

The console runs on a real SQLite journal, mounted on an app of its own; requests go
through Starlette's test client (no browser: tests/integration/test_console_browser.py
drives Chromium through the same pages on a whole gateway).
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from typer.testing import CliRunner

from adapters.console.labels import LABELS
from adapters.console.operators import add_operator, load_operators
from adapters.console.web import Console
from gateway.config import ConfigError, load_config
from gateway.envelope import Envelope
from gateway.journal import Journal, Status, search
from tests.support import configs
from tests.support.gateway_proc import envelope_json, notice

SNILS = "11223344595"
PASSWORDS = {"ivanova": "admin-password-1", "sidorov": "operator-password-1", "petrov": "viewer-password-1"}


@pytest.fixture(scope="module")
def operators_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The operators every test starts with, written by ``add_operator`` once: argon2 is slow on purpose."""
    where = tmp_path_factory.mktemp("operators")
    for name, role in (("ivanova", "admin"), ("sidorov", "operator"), ("petrov", "viewer")):
        add_operator(where, name, role, PASSWORDS[name])
    add_operator(where, "sso.user", "viewer", None)
    text = (where / "operators.yaml").read_text()
    return ("console: {secure_cookies: false, login_attempts: 3, trusted_header: X-Remote-User, "
            "trusted_proxies: [10.0.0.0/8]}\n" + text.split("\n", 1)[1])


@pytest.fixture
def world(tmp_path: Path, operators_yaml: str) -> dict[str, Any]:
    (tmp_path / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/x"))
    (tmp_path / "routes.yaml").write_text(configs.routes())
    # No broker in unit tests: the address refuses at once (replay's tidying of the dead queue is skipped).
    (tmp_path / "gateway.yaml").write_text(configs.settings() + 'broker: {url: "amqp://guest:guest@127.0.0.1:9/%2F"}\n')
    (tmp_path / "operators.yaml").write_text(operators_yaml)
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    journal.migrate()
    console = Console(load_config(tmp_path), journal, load_operators(tmp_path), {})
    app = FastAPI()
    console.mount(app)
    dead = Envelope.from_json(envelope_json("lab", "clinic", notice(snils=SNILS)))
    journal.accept(dead, source="rest", actor="test", route="lab-to-clinic")
    journal.record(dead.message_id, "DEAD", "test", {"reason": "permanent failure: HTTP 400"}, status=Status.DEAD,
                   last_error="permanent failure: HTTP 400")
    return {"dir": tmp_path, "journal": journal, "app": app, "dead": dead.message_id}


def client(world: dict[str, Any], name: str | None = None, host: str = "192.0.2.10") -> TestClient:
    c = TestClient(world["app"], client=(host, 50000))
    if name is not None:
        c.get("/console/login")
        r = c.post("/console/login", data={"name": name, "password": PASSWORDS[name],
                                          "csrf": c.cookies.get("zl_login_csrf")})
        assert r.status_code == 200 and r.url.path == "/console/messages", r.text[:300]
    return c


def csrf(c: TestClient, page: str = "/console/messages") -> str:
    text = c.get(page).text
    return text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def audit(world: dict[str, Any], action: str) -> list[search.AuditEntry]:
    rows, _ = search.audit_rows(world["journal"], action=action)
    return [a for _, a in rows]


def test_a_wrong_password_is_refused_and_audited_and_repeated_failures_are_throttled(world) -> None:
    c = client(world)
    for _ in range(3):
        c.get("/console/login")
        r = c.post("/console/login", data={"name": "ivanova", "password": "guess",
                                          "csrf": c.cookies.get("zl_login_csrf")})
        assert r.status_code == 401 and "Неверное имя или пароль" in r.text
    c.get("/console/login")
    r = c.post("/console/login", data={"name": "ivanova", "password": PASSWORDS["ivanova"],
                                      "csrf": c.cookies.get("zl_login_csrf")})
    assert r.status_code == 429  # even the right password waits out the window from this address
    outcomes = [(a.operator, a.outcome, a.remote) for a in audit(world, "login")]
    assert outcomes == [("ivanova", "throttled", "192.0.2.10")] + [("ivanova", "refused", "192.0.2.10")] * 3
    assert client(world, "ivanova", host="192.0.2.11").get("/console/messages").status_code == 200  # another host


def test_a_sign_in_without_its_csrf_token_is_refused(world) -> None:
    c = client(world)
    c.get("/console/login")
    r = c.post("/console/login", data={"name": "ivanova", "password": PASSWORDS["ivanova"]})
    assert r.status_code == 403 and audit(world, "login")[0].detail == {"why": "csrf"}


def test_pages_need_a_session(world) -> None:
    r = client(world).get("/console/dead", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=%2Fconsole%2Fdead")


def test_a_viewer_sees_no_replay_button_and_its_post_is_refused_and_audited(world) -> None:
    c = client(world, "petrov")
    page = c.get(f"/console/messages/{world['dead']}").text
    assert 'id="replay"' not in page and "DEAD" in page
    assert 'name="id"' not in c.get("/console/dead").text  # no checkboxes either
    r = c.post("/console/dead/run", data={"csrf": csrf(c), "scope": "selected", "id": world["dead"]})
    assert r.status_code == 403
    assert world["journal"].get(world["dead"]).status == "DEAD"
    refused = audit(world, "forbidden")
    assert refused[0].operator == "petrov" and refused[0].target == "/console/dead/run"


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(world) -> None:
    c = client(world, "sidorov")
    assert c.post("/console/dead/run", data={"scope": "selected", "id": world["dead"]}).status_code == 403
    token = csrf(c)
    r = c.post("/console/dead/run", data={"csrf": token, "scope": "selected", "id": world["dead"]},
               headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and world["journal"].get(world["dead"]).status == "DEAD"
    assert [a.detail["token_sent"] for a in audit(world, "csrf_refused")] == [True, False]


def test_an_operator_previews_then_replays_and_the_trail_and_audit_say_who(world) -> None:
    c = client(world, "sidorov")
    token = csrf(c)
    preview = c.post("/console/dead/preview", data={"csrf": token, "scope": "filter", "route": "lab-to-clinic"})
    assert preview.status_code == 200 and "<td>clinic</td><td class=\"num\">1</td>" in preview.text
    assert world["journal"].get(world["dead"]).status == "DEAD"  # a preview changes nothing
    done = c.post("/console/dead/run", data={"csrf": token, "scope": "filter", "route": "lab-to-clinic"})
    assert done.status_code == 200 and world["dead"] in done.text
    assert world["journal"].get(world["dead"]).status == "ACCEPTED"
    replayed = [e for e in world["journal"].trail(world["dead"]) if e.kind == "REPLAYED"]
    assert replayed[0].actor == "console:sidorov"
    entry = audit(world, "replay")[0]
    assert entry.operator == "sidorov" and entry.detail["done"] == 1 and entry.detail["messages"] == [world["dead"]]


def test_a_viewer_gets_the_envelope_masked_and_an_operator_in_full_both_audited(world) -> None:
    viewer = client(world, "petrov").get(f"/console/messages/{world['dead']}?envelope=1").text
    assert SNILS not in viewer and "*********95" in viewer and "SNILS" in viewer and 'id="masked-note"' in viewer
    full = client(world, "sidorov").get(f"/console/messages/{world['dead']}?envelope=1").text
    assert SNILS in full and 'id="masked-note"' not in full
    views = [(a.operator, a.detail["masked"], a.target) for a in audit(world, "view_payload")]
    assert views == [("sidorov", False, world["dead"]), ("petrov", True, world["dead"])]


def test_bad_input_gets_a_clear_error_and_an_audit_record(world) -> None:
    c = client(world, "petrov")
    r = c.get("/console/messages?since=yesterday")
    assert r.status_code == 400 and "since: not a date" in r.text
    r = c.get("/console/messages?status=LOST")
    assert r.status_code == 400 and "status: not one of" in r.text
    assert c.get("/console/messages?after=garbage").status_code == 400
    assert c.get("/console/dead?older_than=ten").status_code == 400
    assert len(audit(world, "bad_input")) == 4
    assert c.get("/console/messages/not-a-message").status_code == 404


def test_search_filters_pages_and_exports(world) -> None:
    journal: Journal = world["journal"]
    ids = []
    for _ in range(7):
        env = Envelope.from_json(envelope_json("lab", "clinic", message_id=str(uuid.uuid1())))
        journal.accept(env, source="rest", actor="test", route="lab-to-clinic")
        ids.append(env.message_id)
    first = search.search(journal, search.MessageFilter(statuses=("ACCEPTED",)), limit=5)
    assert [r.message_id for r in first.rows] == ids[::-1][:5] and first.next_cursor
    second = search.search(journal, search.MessageFilter(statuses=("ACCEPTED",)), cursor=first.next_cursor, limit=5)
    assert [r.message_id for r in second.rows] == ids[::-1][5:] and second.next_cursor is None
    assert search.count_upto(journal, search.MessageFilter(), cap=5) == (5, True)
    c = client(world, "petrov")
    page = c.get("/console/messages?status=ACCEPTED&order=oldest").text
    assert page.index(ids[0]) < page.index(ids[6]) and world["dead"] not in page
    exported = c.get("/console/messages.csv?status=DEAD").text.splitlines()
    assert len(exported) == 2 and exported[1].startswith(world["dead"])
    assert audit(world, "export_csv")[0].operator == "petrov"


def test_every_page_renders_in_russian_and_english_for_an_admin_and_the_audit_is_admins_only(world) -> None:
    admin = client(world, "ivanova")
    for lang in ("ru", "en"):
        for page in ("messages", "dead", "stuck", "labs", "acts", "registry", "system", "audit",
                     f"messages/{world['dead']}"):
            r = admin.get(f"/console/{page}?lang={lang}")
            assert r.status_code == 200, (page, r.text[:500])
            assert LABELS["messages"][0 if lang == "ru" else 1] in r.text
    assert "check-config" in admin.get("/console/system").text
    assert client(world, "sidorov").get("/console/audit").status_code == 403
    assert 'id="participants"' not in client(world, "sidorov").get("/console/system").text


def test_the_sso_header_is_believed_from_the_proxy_only_and_names_a_listed_operator(world) -> None:
    proxy = TestClient(world["app"], client=("10.1.2.3", 50000))
    r = proxy.get("/console/login", headers={"X-Remote-User": "sso.user", "X-Forwarded-For": "192.0.2.77"})
    assert r.status_code == 200 and r.url.path == "/console/messages"
    login = audit(world, "login")[0]
    assert (login.operator, login.detail, login.remote) == ("sso.user", {"via": "header"}, "192.0.2.77")
    stranger = TestClient(world["app"], client=("192.0.2.5", 50000))
    r = stranger.get("/console/login", headers={"X-Remote-User": "ivanova"})
    assert 'id="sign-in"' in r.text  # not from the proxy: the header means nothing, a password is asked
    assert proxy.get("/console/login", headers={"X-Remote-User": "mallory"}).status_code == 403


def test_operators_yaml_mistakes_are_config_errors_and_hashes_are_argon2(world) -> None:
    path = world["dir"] / "operators.yaml"
    assert "$argon2id$" in path.read_text() and PASSWORDS["ivanova"] not in path.read_text()
    path.write_text("operators:\n  - {name: x, role: root, password_hash: plain}\n")
    with pytest.raises(ConfigError) as exc:
        load_operators(world["dir"])
    assert {p.key for p in exc.value.problems} == {"operators.0.name", "operators.0.role",
                                                  "operators.0.password_hash"}


def test_the_cli_adds_operators_searches_and_previews_a_filtered_replay(world) -> None:
    from application.cli import app

    runner = CliRunner()
    env = {"ZL_DATABASE_URL": world["journal"].url}
    cfg = ["--config", str(world["dir"])]
    added = runner.invoke(app, ["operator", "add", "new.one", "--role", "operator", "--password-stdin", *cfg],
                          input="a-long-password\n")
    assert added.exit_code == 0 and "added new.one (operator)" in added.output
    assert "new.one" in runner.invoke(app, ["operator", "list", *cfg]).output
    found = runner.invoke(app, ["messages", "search", "--status", "DEAD", *cfg], env=env)
    assert found.exit_code == 0 and world["dead"] in found.output and "1 found" in found.output
    dry = runner.invoke(app, ["replay", "--all-dead", "--route", "lab-to-clinic", "--reason", "HTTP 400",
                              "--dry-run", *cfg], env=env)
    assert dry.exit_code == 0 and "1 would be replayed" in dry.output and "clinic" in dry.output
    none = runner.invoke(app, ["replay", "--all-dead", "--recipient", "lab", "--dry-run", *cfg], env=env)
    assert "0 would be replayed" in none.output
    assert world["journal"].get(world["dead"]).status == "DEAD"
    assert runner.invoke(app, ["replay", world["dead"], "--route", "x", *cfg], env=env).exit_code == 2


def test_the_system_page_shows_the_evidence_chain_and_retention(world) -> None:
    from gateway.evidence.retention import place_hold
    from gateway.evidence.sealer import Sealer

    journal = world["journal"]
    page = client(world, "petrov").get("/console/system").text
    unsealed = int(page.split('id="evidence-unsealed"', 1)[1].split(">", 1)[1].split("<", 1)[0])
    assert unsealed > 0 and 'id="evidence-batches">0<' in page
    Sealer(journal).seal_once()
    place_hold(journal, reason="case 1", by="test", participant="lab")
    page = client(world, "petrov").get("/console/system").text
    assert 'id="evidence-batches">1<' in page and '>0</dd>' in page.split('id="evidence-unsealed"', 1)[1][:80]
    assert 'id="legal-holds">1<' in page

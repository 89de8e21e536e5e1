"""Log lines about a message name it, its route and its participant; failures and failovers are WARNINGs."""
from __future__ import annotations

import io
import json
import logging

import pytest

from monitoring.logs import ContextFilter, JsonFormatter, TextFormatter, about, annotate, message_context
from tests.unit.test_delivery_policy import DOWN, OK, Script, handle, routed, world  # noqa: F401 (fixture)


def _capture(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter)
    handler.setLevel(logging.INFO)
    return handler, out


@pytest.fixture
def json_lines():
    handler, out = _capture(JsonFormatter("delivery"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_failed_attempt_and_a_failover_are_warnings_with_the_message_route_and_participant(world, json_lines):  # noqa: F811
    worker, journal, _ = world(Script(primary=[DOWN], backup=[OK]), attempts=1)
    mid, body, headers = routed(journal)
    with message_context(mid, "lab-to-clinic"):  # as the consumer sets it around each message
        handle(worker, mid, body, headers)
    lines = json_lines()
    failed = [ln for ln in lines if "failed" in ln["message"]]
    failover = [ln for ln in lines if ln["message"].startswith("failover")]
    assert failed and failover and journal.get(mid).status == "DELIVERED"
    for line in failed + failover:
        assert line["level"] == "WARNING" and line["message_id"] == mid
        assert line["route"] == "lab-to-clinic" and line["participant"] == journal.get(mid).recipient
    assert "HTTP 503" in failed[0]["message"] and "primary" in failover[0]["message"]


def test_a_dead_letter_is_a_warning_with_its_reason(world, json_lines):  # noqa: F811
    worker, journal, _ = world(Script(primary=[DOWN], backup=[DOWN]), attempts=1)
    mid, body, headers = routed(journal)
    handle(worker, mid, body, headers)  # outside any context: the line carries its own fields
    dead = [ln for ln in json_lines() if "is DEAD" in ln["message"]]
    assert dead and dead[0]["level"] == "WARNING" and dead[0]["message_id"] == mid
    assert dead[0]["participant"] == journal.get(mid).recipient and "all channels failed" in dead[0]["message"]


def test_the_text_format_carries_the_same_fields_and_nothing_leaks_out_of_the_context() -> None:
    handler, out = _capture(TextFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with message_context("m-1", "r-1"):
            annotate(participant="clinic")
            log.info("inside")
        log.info("outside")
        log.info("about one", extra=about("m-2", participant="lab"))
    finally:
        log.removeHandler(handler)
    inside, outside, one = out.getvalue().splitlines()
    assert inside == "INFO inside [message_id=m-1 route=r-1 participant=clinic]"
    assert outside == "INFO outside" and one == "INFO about one [message_id=m-2 participant=lab]"

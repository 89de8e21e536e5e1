"""The spine end to end: real processes, real RabbitMQ, real recipient servers on 127.0.0.1."""
from __future__ import annotations

import signal
import time

import pytest

from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import free_port
from tests.support import configs
from tests.support.configs import CLINIC_TOKEN, LAB_TOKEN
from tests.support.gateway_proc import envelope_json, notice
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def clinic():
    server = RecipientServer(name="clinic").start()
    yield server
    server.stop()


def events(status: dict) -> list[str]:
    return [e["event"] for e in status["trail"]]


def test_end_to_end_delivered_once_with_full_trail(gateway_factory, clinic, db_url):
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), db_url=db_url,
                         settings=configs.settings())
    body = envelope_json("lab", "clinic")
    r = gw.post(body, LAB_TOKEN)
    assert r.status_code == 202, r.text
    assert r.json()["messageId"] == body["messageId"]
    assert r.headers["location"] == f"/api/v1/messages/{body['messageId']}"

    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    # PUBLISHED (the relay's confirm) may be journalled just after ROUTED; both are always there.
    assert set(events(st)) >= {"ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"}
    assert events(st)[0] == "ACCEPTED" and events(st)[-1] == "DELIVERED"
    assert st["trailIntact"] is True
    assert st["channel"] == "default"
    # Exactly once at the recipient, with the MessageID as the idempotency key, as the XML envelope.
    assert len(clinic.requests) == 1
    got = clinic.requests[0]
    assert got.idempotency_key == body["messageId"]
    assert got.content_type.startswith("application/xml")
    assert b"<n:Code>SAMPLE_RECEIVED</n:Code>" in got.body
    # The recipient can read the status too; a third party cannot.
    assert gw.status(body["messageId"], CLINIC_TOKEN)["status"] == "DELIVERED"

    # The same message again: the first answer, and still one delivery.
    again = gw.post(body, LAB_TOKEN)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    time.sleep(0.5)
    assert len(clinic.accepted) == 1 and len(clinic.requests) == 1

    text = gw.metrics()
    assert 'zl_messages_accepted_total{participant="lab",source="rest"} 1.0' in text
    assert 'zl_messages_delivered_total{channel="default",participant="clinic",route="lab-to-clinic"} 1.0' in text
    assert 'zl_accept_to_delivered_seconds_count{route="lab-to-clinic"} 1.0' in text
    assert f'zl_queue_depth{{queue="{gw.prefix}.dead"}} 0.0' in text
    assert 'zl_oldest_in_flight_age_seconds{status="ACCEPTED"}' in text
    assert gw.http.get("/readyz").json() == {"ready": True, "checks": {"journal": True, "broker": True}}


def test_json_recipient_gets_the_json_form(gateway_factory, clinic):
    gw = gateway_factory(configs.participants(clinic.url, clinic_format="json"), configs.routes(),
                         settings=configs.settings())
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    import json

    got = json.loads(clinic.requests[0].body)
    assert got["messageId"] == body["messageId"] and got["sender"] == "lab"
    assert "SAMPLE_RECEIVED" in got["payload"]


def test_503_three_times_then_delivered_after_retries(gateway_factory, clinic):
    clinic.set_script([503, 503, 503, 200])
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(attempts=5, initial_delay=0.05),
                         settings=configs.settings())
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    ev = events(st)
    assert ev.count("DELIVERY_FAILED") == 3
    assert ev.count("RETRY_SCHEDULED") == 3
    assert st["attempts"] == 4
    failed = [e for e in st["trail"] if e["event"] == "DELIVERY_FAILED"]
    assert [f["detail"]["error"] for f in failed] == ["HTTP 503"] * 3
    assert len(clinic.requests) == 4
    assert {r.idempotency_key for r in clinic.requests} == {body["messageId"]}
    assert [r.attempt for r in clinic.requests] == ["1", "2", "3", "4"]
    assert 'zl_delivery_retries_total{mode="in_process",participant="clinic"} 3.0' in gw.metrics()


def test_long_retry_goes_through_the_delayed_retry_queue(gateway_factory, clinic):
    clinic.set_script([503, 200])
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(attempts=3, initial_delay=1.0),
                         settings=configs.settings(in_process_max_delay=0.1))
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    scheduled = [e["detail"] for e in st["trail"] if e["event"] == "RETRY_SCHEDULED"]
    assert scheduled == [{"channel": "default", "next_attempt": 2, "delay_s": 1, "mode": "queued",
                          "queue": f"{gw.prefix}.retry.1s"}]
    assert len(clinic.requests) == 2


def test_primary_down_fails_over_and_breaker_opens_then_closes(gateway_factory, clinic):
    primary_port = free_port()  # nothing listens there yet
    primary_url = f"http://127.0.0.1:{primary_port}/zdravlink/inbox"
    gw = gateway_factory(
        configs.participants(clinic.url),
        configs.routes(channels=[("primary", primary_url), ("backup", clinic.url)], attempts=2, initial_delay=0.05),
        settings=configs.settings(failure_threshold=3, reset_timeout=1.5),
    )
    first = envelope_json("lab", "clinic")
    gw.post(first, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(first["messageId"], LAB_TOKEN, "DELIVERED")
    assert st["channel"] == "backup"
    assert "FAILOVER" in events(st) and events(st).count("DELIVERY_FAILED") == 2

    second = envelope_json("lab", "clinic")
    gw.post(second, LAB_TOKEN).raise_for_status()
    assert gw.wait_status(second["messageId"], LAB_TOKEN, "DELIVERED")["channel"] == "backup"
    # Two failures from the first message and one here reach the threshold of three: open.
    assert 'zl_circuit_state{channel="primary",participant="clinic"} 2.0' in gw.metrics()

    third = envelope_json("lab", "clinic")
    gw.post(third, LAB_TOKEN).raise_for_status()
    st3 = gw.wait_status(third["messageId"], LAB_TOKEN, "DELIVERED")
    assert "CIRCUIT_OPEN" in events(st3) and "DELIVERY_FAILED" not in events(st3)  # no call to a dead endpoint
    # The second message's own failure opened the breaker, so its next try was refused by
    # the breaker too: two failovers for an open circuit, one for an exhausted channel.
    failovers = [line for line in gw.metrics().splitlines() if line.startswith("zl_failovers_total")]
    assert sorted(failovers) == ['zl_failovers_total{reason="circuit_open",route="lab-to-clinic"} 2.0',
                                 'zl_failovers_total{reason="exhausted",route="lab-to-clinic"} 1.0']

    primary = RecipientServer(port=primary_port, name="primary").start()
    try:
        time.sleep(1.7)  # past the reset timeout: the next call is the half-open trial
        fourth = envelope_json("lab", "clinic")
        gw.post(fourth, LAB_TOKEN).raise_for_status()
        assert gw.wait_status(fourth["messageId"], LAB_TOKEN, "DELIVERED")["channel"] == "primary"
        assert list(primary.accepted) == [fourth["messageId"]]
        assert 'zl_circuit_state{channel="primary",participant="clinic"} 0.0' in gw.metrics()
    finally:
        primary.stop()


def test_400_is_dead_at_once_and_replay_delivers_it(gateway_factory, clinic):
    clinic.set_script([400])
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(attempts=5), settings=configs.settings())
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DEAD")
    assert len(clinic.requests) == 1  # no retries for a permanent failure
    assert "RETRY_SCHEDULED" not in events(st)
    assert st["lastError"] == "permanent failure: HTTP 400"
    wait_for(lambda: f'zl_queue_depth{{queue="{gw.prefix}.dead"}} 1.0' in gw.metrics(), what="dead queue depth 1")

    # The recipient is fixed; the operator replays.
    result = gw.cli("replay", body["messageId"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed" in result.stdout
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    replayed = [e for e in st["trail"] if e["event"] == "REPLAYED"]
    assert replayed and replayed[0]["detail"]["from_status"] == "DEAD"
    assert replayed[0]["detail"]["previous_error"] == "permanent failure: HTTP 400"
    assert st["replays"] == 1 and st["trailIntact"]
    assert list(clinic.accepted) == [body["messageId"]]
    wait_for(lambda: f'zl_queue_depth{{queue="{gw.prefix}.dead"}} 0.0' in gw.metrics(), what="dead queue emptied")

    # Replaying something that is not dead is refused, with a non-zero exit.
    again = gw.cli("replay", body["messageId"])
    assert again.returncode == 1 and "only DEAD or FAILED" in again.stdout


def test_replay_all_dead(gateway_factory, clinic):
    clinic.set_script([422, 422])
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings())
    bodies = [envelope_json("lab", "clinic") for _ in range(2)]
    for b in bodies:
        gw.post(b, LAB_TOKEN).raise_for_status()
    for b in bodies:
        gw.wait_status(b["messageId"], LAB_TOKEN, "DEAD")
    result = gw.cli("replay", "--all-dead")
    assert result.returncode == 0, result.stderr
    for b in bodies:
        gw.wait_status(b["messageId"], LAB_TOKEN, "DELIVERED")
    assert sorted(clinic.accepted) == sorted(b["messageId"] for b in bodies)


def test_broker_down_after_acceptance_loses_and_duplicates_nothing(gateway_factory, clinic, private_rabbit):
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings(),
                         broker_url=private_rabbit.url)
    warm = envelope_json("lab", "clinic")
    gw.post(warm, LAB_TOKEN).raise_for_status()
    gw.wait_status(warm["messageId"], LAB_TOKEN, "DELIVERED")

    # Messages already in the broker's queues when it stops: no delivery worker consumes them.
    gw.kill("delivery-1", signal.SIGTERM)
    queued = [envelope_json("lab", "clinic") for _ in range(5)]
    for b in queued:
        gw.post(b, LAB_TOKEN).raise_for_status()
    for b in queued:
        gw.wait_status(b["messageId"], LAB_TOKEN, "ROUTED")

    private_rabbit.stop_app()
    try:
        wait_for(lambda: gw.http.get("/readyz").status_code == 503, timeout=10, what="readyz to report the broker")
        assert gw.http.get("/readyz").json()["checks"]["broker"] is False
        bodies = [envelope_json("lab", "clinic") for _ in range(5)]
        for b in bodies:
            r = gw.post(b, LAB_TOKEN)
            assert r.status_code == 202, r.text  # accepted while the broker is down
        time.sleep(1.0)
        assert {gw.status(b["messageId"], LAB_TOKEN)["status"] for b in bodies} == {"ACCEPTED"}
    finally:
        private_rabbit.start_app()
    gw.spawn("delivery-1")
    for b in bodies + queued:
        gw.wait_status(b["messageId"], LAB_TOKEN, "DELIVERED", timeout=60)
    ids = [b["messageId"] for b in bodies + queued] + [warm["messageId"]]
    assert sorted(clinic.accepted) == sorted(ids)
    assert len(clinic.requests) == len(ids)  # nothing delivered twice


def test_delivery_worker_killed_mid_delivery_redelivers_with_same_key(gateway_factory, clinic):
    clinic.delay = 2.0
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings())
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    wait_for(lambda: len(clinic.requests) >= 1 or clinic.delay == 0, timeout=20, what="the first request")
    # The request is in flight at the recipient (it sleeps 2 s): kill the worker now.
    assert gw.kill("delivery-1") == -9
    clinic.delay = 0.0
    gw.spawn("delivery-1")
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED", timeout=60)
    assert st["status"] == "DELIVERED"
    assert {r.idempotency_key for r in clinic.requests} == {body["messageId"]}
    assert list(clinic.accepted) == [body["messageId"]]  # the recipient processed it once
    assert events(st).count("DELIVERED") == 1


def test_no_route_condition_match_is_refused(gateway_factory, clinic):
    gw = gateway_factory(configs.participants(clinic.url),
                         configs.routes(condition="boolean(//*[local-name()='Code' and .='URGENT'])"),
                         settings=configs.settings())
    r = gw.post(envelope_json("lab", "clinic"), LAB_TOKEN)
    assert r.status_code == 403 and r.json()["code"] == "ROUTE_FORBIDDEN"
    ok = envelope_json("lab", "clinic", payload=notice(code="URGENT"))
    assert gw.post(ok, LAB_TOKEN).status_code == 202
    gw.wait_status(ok["messageId"], LAB_TOKEN, "DELIVERED")

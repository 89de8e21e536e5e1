"""The spine end to end: real processes, real RabbitMQ, real recipient servers on 127.0.0.1.

Most tests here run on one gateway shared by the module (``shared_gw``: a gateway is 4-5
processes and seconds to start) with one clinic (``shared_clinic``). So each test looks only
at its own messages: their trails, the clinic's deliveries of their MessageIDs (its failures
are scripted per MessageID too), and the change they made to a counter or to the dead-letter
queue, read once nothing of an earlier test is still in flight. Tests that kill or stop
processes, cut the broker, or need route settings of their own start a gateway of their own.
"""
from __future__ import annotations

import json
import signal
import time
from collections import deque
from collections.abc import Iterator

import pytest

from demo.emulators.rest_recipient import Received, RecipientServer
from routing.topology import Topology
from tests.conftest import module_gateway
from tests.support import configs
from tests.support.configs import CLINIC_TOKEN, LAB_TOKEN, NOTICE_NS
from tests.support.gateway_proc import GatewayProcesses, delivered, envelope_json, notice
from tests.support.ports import free_port
from tests.support.waiting import wait_for

# xdist_group: under `pytest -n … --dist loadgroup` one worker runs the module, whose tests share one gateway.
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("spine")]

URGENT = "boolean(//*[local-name()='Code' and .='URGENT'])"


@pytest.fixture
def clinic() -> Iterator[RecipientServer]:
    """A clinic of the test's own, for the tests with a gateway of their own: they script or delay its every
    answer, or count everything it received."""
    server = RecipientServer(name="clinic").start()
    yield server
    server.stop()


class SharedClinic(RecipientServer):
    """The clinic behind the shared gateway. It fails only the deliveries of the MessageIDs a test names
    (``fail``), never by the order requests come in: a script for whatever came next would answer another
    test's late retry, or be left half-used for the next test by one that failed."""

    def __init__(self) -> None:
        super().__init__(name="clinic")
        self.failures: dict[str, deque[int]] = {}

    def fail(self, message_id: str, *codes: int) -> None:
        """Answer the next deliveries of ``message_id`` with these error statuses, one each, then as usual."""
        with self._lock:
            self.failures[message_id] = deque(codes)

    def _answer(self, item: Received) -> int:
        with self._lock:
            codes = self.failures.get(item.message_id)
            if codes:
                self.requests.append(item)
                return codes.popleft()
        return super()._answer(item)


@pytest.fixture(scope="module")
def shared_clinic() -> Iterator[SharedClinic]:
    """The recipients of the shared gateway, for the whole module: tests pick their own deliveries with ``delivered``."""
    server = SharedClinic().start()
    yield server
    server.stop()


def shared_participants(clinic_url: str) -> str:
    """``configs.participants`` and two more recipients at the same clinic server, for the tests of a JSON
    recipient (``clinic-json``) and of a route condition (``clinic-urgent``) on the shared gateway."""
    return configs.participants(clinic_url) + f"""  - mnemonic: clinic-json
    name: Test clinic MIS taking JSON
    kind: mis
    delivery: {{mode: rest, url: "{clinic_url}", format: json}}
  - mnemonic: clinic-urgent
    name: Test clinic MIS taking urgent notices only
    kind: mis
    delivery: {{mode: rest, url: "{clinic_url}", format: xml}}
"""


def shared_routes() -> str:
    """``configs.routes()`` (lab-to-clinic) and a route to each of the two more recipients; the one to
    ``clinic-urgent`` is the only route there, and has a condition."""
    return configs.routes() + f"""  - name: lab-to-clinic-json
    sender: lab
    message_type: "{NOTICE_NS}"
    recipient: clinic-json
  - name: lab-to-clinic-urgent
    sender: lab
    message_type: "{NOTICE_NS}"
    recipient: clinic-urgent
    condition: "{URGENT}"
"""


@pytest.fixture(scope="module")
def shared_gw(shared_clinic: SharedClinic, amqp_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcesses]:
    """One gateway for the tests that need no more than ``configs.routes()`` and ``configs.settings()`` (and the
    two recipients above), built as ``gateway_factory`` builds one (that fixture is per test). Tests take it
    as ``gw``."""
    yield from module_gateway(tmp_path_factory.mktemp("spine") / "gw", shared_participants(shared_clinic.url),
                              shared_routes(), settings=configs.settings(), amqp_url=amqp_url)


@pytest.fixture
def gw(shared_gw: GatewayProcesses) -> GatewayProcesses:
    """The shared gateway, settled (see ``settled``) for the test."""
    return settled(shared_gw)


@pytest.fixture
def journal_gw(db_url: str, request: pytest.FixtureRequest, gateway_factory,
               shared_clinic: SharedClinic) -> GatewayProcesses:
    """The shared gateway's configuration on each journal: on SQLite the shared gateway itself (its journal is
    a SQLite file of its own, not ``db_url``'s), on PostgreSQL a gateway of the test's own on ``db_url``."""
    if db_url.startswith("sqlite"):
        return request.getfixturevalue("gw")
    return settled(gateway_factory(shared_participants(shared_clinic.url), shared_routes(), db_url=db_url,
                                   settings=configs.settings()))


def dead_key(gw: GatewayProcesses) -> tuple[str, frozenset[tuple[str, str]]]:
    """The ``samples()`` key of the gateway's dead-letter queue depth."""
    return "zl_queue_depth", frozenset({("queue", f"{gw.prefix}.dead")})


def dead_depth(gw: GatewayProcesses) -> float:
    """Messages in the gateway's dead-letter queue now, as zl_queue_depth has it: tests on the shared gateway
    look at the change."""
    return gw.samples()[dead_key(gw)]


def settled(gw: GatewayProcesses) -> GatewayProcesses:
    """The gateway once none of its messages is in flight, and zl_queue_depth shows as many in the dead-letter
    queue as the journal has DEAD: what a test then counts or reads is its own doing.

    An earlier test's last message (a late retry, a test stopped half-way) is delivered or dead by then.
    And the API caches queue depths for 2 s: waiting for them to agree with the journal keeps a depth from
    before an earlier test's replay (or from before the workers declared the queues) out of the reading."""
    def quiet() -> bool:
        now = gw.samples()
        return (sum(v for (name, _), v in now.items() if name == "zl_messages_in_flight") == 0
                and now.get(dead_key(gw), -1.0) == now.get(("zl_dead_messages", frozenset()), 0.0))

    wait_for(quiet, timeout=30, what="the gateway's messages to settle")
    return gw


def events(status: dict) -> list[str]:
    return [e["event"] for e in status["trail"]]


def test_end_to_end_delivered_once_with_full_trail(journal_gw, shared_clinic):
    gw = journal_gw
    accepted = gw.counted("zl_messages_accepted_total", participant="lab", source="rest")
    delivered_total = gw.counted("zl_messages_delivered_total", channel="default", participant="clinic",
                              route="lab-to-clinic")
    timed = gw.counted("zl_accept_to_delivered_seconds_count", route="lab-to-clinic")
    dead = dead_depth(gw)
    body = envelope_json("lab", "clinic")
    r = gw.post(body, LAB_TOKEN)
    assert r.status_code == 202, r.text
    assert r.json()["messageId"] == body["messageId"]
    assert r.headers["location"] == f"/api/v1/messages/{body['messageId']}"

    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    # PUBLISHED (the relay's confirm) may be journalled just after ROUTED, and ROUTED just after DELIVERED
    # (the router records it after publishing); all are always there, and nothing else follows DELIVERED.
    trail = events(st)
    assert set(trail) >= {"ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"}
    assert trail[0] == "ACCEPTED" and set(trail[trail.index("DELIVERED") + 1:]) <= {"PUBLISHED", "ROUTED"}, trail
    assert st["trailIntact"] is True
    assert st["channel"] == "default"
    # Exactly once at the recipient, with the MessageID as the idempotency key, as the XML envelope.
    (got,) = delivered(shared_clinic, [body["messageId"]])
    assert got.idempotency_key == body["messageId"]
    assert got.content_type.startswith("application/xml")
    assert b"<n:Code>SAMPLE_RECEIVED</n:Code>" in got.body
    # The recipient can read the status too; a third party cannot.
    assert gw.status(body["messageId"], CLINIC_TOKEN)["status"] == "DELIVERED"

    # The same message again: the first answer, and still one delivery.
    again = gw.post(body, LAB_TOKEN)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    time.sleep(0.5)
    assert body["messageId"] in shared_clinic.accepted and len(delivered(shared_clinic, [body["messageId"]])) == 1

    assert gw.counted("zl_messages_accepted_total", participant="lab", source="rest") == accepted + 1
    assert gw.counted("zl_messages_delivered_total", channel="default", participant="clinic",
                   route="lab-to-clinic") == delivered_total + 1
    assert gw.counted("zl_accept_to_delivered_seconds_count", route="lab-to-clinic") == timed + 1
    assert dead_depth(gw) == dead
    assert 'zl_oldest_in_flight_age_seconds{status="ACCEPTED"}' in gw.metrics()
    assert gw.http.get("/readyz").json() == {"ready": True, "checks": {"journal": True, "broker": True}}


def test_json_recipient_gets_the_json_form(gw, shared_clinic):
    body = envelope_json("lab", "clinic-json")
    gw.post(body, LAB_TOKEN).raise_for_status()
    gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    got = json.loads(delivered(shared_clinic, [body["messageId"]])[0].body)
    assert got["messageId"] == body["messageId"] and got["sender"] == "lab"
    assert "SAMPLE_RECEIVED" in got["payload"]


def test_503_three_times_then_delivered_after_retries(gw, shared_clinic):
    body = envelope_json("lab", "clinic")
    shared_clinic.fail(body["messageId"], 503, 503, 503)
    retries = gw.counted("zl_delivery_retries_total", mode="in_process", participant="clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    ev = events(st)
    assert ev.count("DELIVERY_FAILED") == 3
    assert ev.count("RETRY_SCHEDULED") == 3
    assert st["attempts"] == 4
    failed = [e for e in st["trail"] if e["event"] == "DELIVERY_FAILED"]
    assert [f["detail"]["error"] for f in failed] == ["HTTP 503"] * 3
    ours = delivered(shared_clinic, [body["messageId"]])
    assert len(ours) == 4
    assert {r.idempotency_key for r in ours} == {body["messageId"]}
    assert [r.attempt for r in ours] == ["1", "2", "3", "4"]
    assert gw.counted("zl_delivery_retries_total", mode="in_process", participant="clinic") == retries + 3


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


def test_400_is_dead_at_once_and_replay_delivers_it(gw, shared_clinic):
    body = envelope_json("lab", "clinic")
    shared_clinic.fail(body["messageId"], 400)
    dead = dead_depth(gw)
    gw.post(body, LAB_TOKEN).raise_for_status()
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DEAD")
    assert len(delivered(shared_clinic, [body["messageId"]])) == 1  # no retries for a permanent failure
    assert "RETRY_SCHEDULED" not in events(st)
    assert st["lastError"] == "permanent failure: HTTP 400"
    wait_for(lambda: dead_depth(gw) == dead + 1, what="one more message in the dead queue")

    # The recipient is fixed; the operator replays.
    result = gw.cli("replay", body["messageId"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed" in result.stdout
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED")
    replayed = [e for e in st["trail"] if e["event"] == "REPLAYED"]
    assert replayed and replayed[0]["detail"]["from_status"] == "DEAD"
    assert replayed[0]["detail"]["previous_error"] == "permanent failure: HTTP 400"
    assert st["replays"] == 1 and st["trailIntact"]
    assert body["messageId"] in shared_clinic.accepted
    wait_for(lambda: dead_depth(gw) == dead, what="its message taken off the dead queue")

    # Replaying something that is not dead is refused, with a non-zero exit.
    again = gw.cli("replay", body["messageId"])
    assert again.returncode == 1 and "only DEAD or FAILED" in again.stdout


def test_replay_all_dead(gw, shared_clinic):
    bodies = [envelope_json("lab", "clinic") for _ in range(2)]
    ids = [b["messageId"] for b in bodies]
    for b in bodies:
        shared_clinic.fail(b["messageId"], 422)
        gw.post(b, LAB_TOKEN).raise_for_status()
    for b in bodies:
        gw.wait_status(b["messageId"], LAB_TOKEN, "DEAD")
    result = gw.cli("replay", "--all-dead")
    assert result.returncode == 0, result.stderr
    for b in bodies:
        gw.wait_status(b["messageId"], LAB_TOKEN, "DELIVERED")
    assert sorted(m for m in shared_clinic.accepted if m in ids) == sorted(ids)


@pytest.mark.faults  # stops a broker of its own: run with the fault scenarios, alone
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
    deliver_queue = Topology(gw.prefix).deliver_queue("clinic")
    wait_for(lambda: gw.ready_in(deliver_queue) == len(queued), timeout=30, what="the router to route them")

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


@pytest.mark.faults  # SIGKILLs a worker: run with the fault scenarios, alone
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


def test_no_route_condition_match_is_refused(gw):
    # clinic-urgent's only route has a condition: a notice that does not meet it has no route at all
    r = gw.post(envelope_json("lab", "clinic-urgent"), LAB_TOKEN)
    assert r.status_code == 403 and r.json()["code"] == "ROUTE_FORBIDDEN"
    assert r.json()["field"] == "MessagePrimaryContent"  # refused by the condition, not for want of a route
    ok = envelope_json("lab", "clinic-urgent", payload=notice(code="URGENT"))
    assert gw.post(ok, LAB_TOKEN).status_code == 202
    gw.wait_status(ok["messageId"], LAB_TOKEN, "DELIVERED")

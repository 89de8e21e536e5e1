"""The journal and the broker never disagree for long: poison messages, lost copies, journal check.

Real processes and the real RabbitMQ. A poison message is made the way one arrives in
life: its copy on the broker cannot be read (here: its body was damaged), so the
router fails on it at every delivery until RabbitMQ gives up on it.
"""
from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy as sa

from demo.emulators.rest_recipient import RecipientServer
from gateway.journal import Journal
from routing.broker import connect, properties
from routing.topology import Topology
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker

# A poison message keeps changing (HANDLER_FAILED at each delivery) but may pause between deliveries
# longer than a tiny stuck_after on a loaded machine: only the sweeping test uses one.
FAST = "broker: {delivery_limit: 3}\nreconciler: {sweep_interval_seconds: 0.5, stuck_after_seconds: 30}\n"
SWEEPING = "reconciler: {sweep_interval_seconds: 0.5, stuck_after_seconds: 2}\n"


@pytest.fixture
def clinic():
    server = RecipientServer(name="clinic").start()
    yield server
    server.stop()


@pytest.fixture
def gw(gateway_factory, clinic):
    return gateway_factory(configs.participants(clinic.url), configs.routes(),
                           settings=configs.settings() + FAST, reconciler=True)


def test_a_poison_message_becomes_dead_in_the_journal_with_its_reason_and_replay_finds_it(gw, clinic):
    gw.kill("api", signal.SIGTERM)  # no relay: this message's only copy is the damaged one below
    body = envelope_json("lab", "clinic")
    journal = Journal(gw.db_url)
    from gateway.envelope import Envelope

    env = Envelope.from_json(body)
    journal.accept(env, source="rest", actor="test", route="lab-to-clinic")
    journal.mark_published([env.message_id], "test-relay")
    assert gw.cli("declare-topology").returncode == 0
    conn = connect(gw.amqp_url, "test-poison", heartbeat=0)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(f"{gw.prefix}.ingress", "route", b"<damaged in transit",
                         properties(env.message_id, {"x-zl-generation": 0}), mandatory=True)
    finally:
        conn.close()
    gw.spawn("api")
    gw.wait_ready()
    st = gw.wait_status(env.message_id, LAB_TOKEN, "DEAD", timeout=60)
    dead = [e for e in st["trail"] if e["event"] == "DEAD"][0]
    assert "dead-lettered it from" in dead["detail"]["reason"] and "after 4 deliveries" in dead["detail"]["reason"]
    assert "last failure: Rejection" in dead["detail"]["reason"]  # what the router said, from its HANDLER_FAILED
    assert [e["event"] for e in st["trail"]].count("HANDLER_FAILED") == 4 and st["trailIntact"]
    assert 'zl_reconciled_total{reason="delivery_limit"} 1.0' in gw.metrics()

    listed = gw.cli("replay", "--all-dead")
    assert listed.returncode == 0 and env.message_id in listed.stdout and "1 replayed" in listed.stdout
    gw.wait_status(env.message_id, LAB_TOKEN, "DELIVERED")  # the journal's own envelope was never damaged
    assert list(clinic.accepted) == [env.message_id]
    assert gw.cli("journal", "check").returncode == 0


def test_a_message_whose_copy_was_lost_is_swept_round_again_and_delivered_once(gateway_factory, clinic):
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings() + SWEEPING, reconciler=True)
    gw.kill("router", signal.SIGTERM)
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    gw.wait_status(body["messageId"], LAB_TOKEN, "PUBLISHED")
    conn = connect(gw.amqp_url, "test-purge", heartbeat=0)
    try:
        assert conn.channel().queue_purge(f"{gw.prefix}.route").method.message_count == 1  # an operator's slip
    finally:
        conn.close()
    gw.spawn("router")
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED", timeout=30)
    kinds = [e["event"] for e in st["trail"]]
    assert kinds.count("SWEPT") == 1 and kinds.index("SWEPT") < kinds.index("DELIVERED")
    swept = st["trail"][kinds.index("SWEPT")]
    assert swept["detail"]["from_status"] == "PUBLISHED" and swept["detail"]["generation"] == 1
    assert list(clinic.accepted) == [body["messageId"]] and st["trailIntact"]


def test_a_routed_message_waiting_in_its_recipients_queue_is_not_swept(gateway_factory, clinic):
    """The router writes nothing for a copy it routes (its ROUTED comes with the delivery's outcome),
    so a message whose copy waits in the recipient's queue shows PUBLISHED; that is no lost copy."""
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings() + SWEEPING,
                         reconciler=True)
    gw.kill("delivery-1", signal.SIGTERM)
    assert gw.cli("declare-topology").returncode == 0  # the worker may have gone before it declared its queue
    body = envelope_json("lab", "clinic")
    gw.post(body, LAB_TOKEN).raise_for_status()
    deliver_queue = Topology(gw.prefix).deliver_queue("clinic")
    wait_for(lambda: gw.ready_in(deliver_queue) == 1, timeout=30, what="the router to route it")
    time.sleep(2 + 3 * 0.5 + 1)  # past stuck_after, and three sweeps
    st = gw.status(body["messageId"], LAB_TOKEN)
    assert st["status"] == "PUBLISHED" and "SWEPT" not in [e["event"] for e in st["trail"]], st["trail"]
    gw.spawn("delivery-1")
    st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED", timeout=30)
    kinds = [e["event"] for e in st["trail"]]
    assert kinds == ["ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"] and st["trailIntact"], kinds
    assert list(clinic.accepted) == [body["messageId"]]


def test_a_message_its_worker_holds_through_a_slow_delivery_is_not_swept(gateway_factory):
    """RabbitMQ does not count a copy a worker holds unacknowledged: the recipient queue looks empty
    for the whole attempt, longer than stuck_after here, and the message still shows PUBLISHED."""
    slow = RecipientServer(name="clinic", delay=3.0).start()  # under delivery.timeout_seconds (5)
    try:
        gw = gateway_factory(configs.participants(slow.url), configs.routes(), settings=configs.settings() + SWEEPING,
                             reconciler=True)
        body = envelope_json("lab", "clinic")
        gw.post(body, LAB_TOKEN).raise_for_status()
        st = gw.wait_status(body["messageId"], LAB_TOKEN, "DELIVERED", timeout=30)
        kinds = [e["event"] for e in st["trail"]]
        assert kinds == ["ACCEPTED", "PUBLISHED", "ROUTED", "DELIVERED"] and st["trailIntact"], kinds
        time.sleep(1)  # a second copy, had one been swept round, would reach the recipient by now
        assert list(slow.accepted) == [body["messageId"]]
    finally:
        slow.stop()


def test_journal_check_finds_stuck_messages_and_broken_trails_and_repair_mends_what_it_can(gateway_factory, clinic):
    gw = gateway_factory(configs.participants(clinic.url), configs.routes(),
                         settings=configs.settings())  # no reconciler: the check and its --repair do the work
    gw.kill("router", signal.SIGTERM)
    lost, tampered = envelope_json("lab", "clinic"), envelope_json("lab", "clinic")
    for b in (lost, tampered):
        gw.post(b, LAB_TOKEN).raise_for_status()
        gw.wait_status(b["messageId"], LAB_TOKEN, "PUBLISHED")
    conn = connect(gw.amqp_url, "test-purge", heartbeat=0)
    try:
        conn.channel().queue_purge(f"{gw.prefix}.route")
    finally:
        conn.close()
    engine = sa.create_engine(gw.db_url)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE events SET actor = 'someone else' WHERE message_id = :m AND kind = 'ACCEPTED'"),
                  {"m": tampered["messageId"]})
    engine.dispose()

    found = gw.cli("journal", "check", "--older-than", "0")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"stuck {lost['messageId']}: PUBLISHED" in found.stdout
    assert f"trail does not verify {tampered['messageId']}" in found.stdout

    repaired = gw.cli("journal", "check", "--older-than", "0", "--repair")
    assert "2 swept" in repaired.stdout, repaired.stdout
    gw.spawn("router")
    for b in (lost, tampered):
        gw.wait_status(b["messageId"], LAB_TOKEN, "DELIVERED")
    after = gw.cli("journal", "check", "--older-than", "0")
    # The delivered messages are no longer stuck; a tampered trail stays broken: the check never hides it.
    assert after.returncode == 1 and "stuck" not in after.stdout.replace("0 stuck", "")
    assert f"trail does not verify {tampered['messageId']}" in after.stdout


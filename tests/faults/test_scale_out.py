"""Scale-out under faults: two gateway nodes on one PostgreSQL journal and a 3-node RabbitMQ cluster.

Under a steady load spread over both nodes' APIs, the RabbitMQ node that leads the
queues is SIGKILLed, then one whole gateway node (``zdravlink run`` and every process it
started) is SIGKILLed, then both come back. Every accepted message must be DELIVERED,
none lost; the recipient may see a repeat only with the message's own
Idempotency-Key; every tenth delivery is answered 503, and its retry is parked in the
broker's retry queues and comes back to whichever node's worker takes it; the killed
node's once-only duty (the sweeper) is taken over by the
other node once its lease runs out, and is never held by two at once; requests to ФРМО
sent just before the gateway node that holds the deadline watcher's lease is killed
(ФРМО answers 503 with Retry-After: 20 the first time) each get exactly one TIMEOUT,
from the other node (or from the killed one, if the deadline passed before it died),
and then the registry's late answer.

The cluster is the test's own: three nodes with their own names, ports (5770-5779) and
data directories, joined with ``rabbitmqctl join_cluster``, removed at the end.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.ca import demo_signer
from demo.emulators.registries import DEMO_DATASET, FrmoEmulator, load_dataset
from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import PG_URL
from tests.support.configs import CLINIC_TOKEN
from tests.support.ports import free_port
from tests.support.rabbit_node import RabbitCluster
from tests.support.scale_out import (
    ORG,
    Database,
    GatewayNode,
    SpreadLoad,
    leases,
    recovery,
    remove_topology,
    settle,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.faults, pytest.mark.broker, pytest.mark.postgres, pytest.mark.timeout(900)]

CLUSTER_PORT = 5770  # 5770-5779: AMQP, distribution and the CLI tools' ports of the three nodes
LEASE_TTL, LEASE_RENEW = 6.0, 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    c = RabbitCluster(tmp_path_factory.mktemp("cluster"), CLUSTER_PORT, 3)
    try:
        yield c.start()
    finally:
        c.remove()


def deadlines_passed(db_url: str, requests: list[str]) -> dict[str, list[tuple[str, str, float]]]:
    """Request → each DEADLINE_PASSED of its trail: (the TIMEOUT answer's id, who sent it, when: wall clock)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, detail, actor, at FROM events "
                                        "WHERE kind = 'DEADLINE_PASSED'"))
            out: dict[str, list[tuple[str, str, float]]] = {m: [] for m in requests}
            for mid, detail, actor, at in rows:
                out.setdefault(mid, []).append((json.loads(detail)["answer"], actor, at.timestamp()))
    finally:
        engine.dispose()
    return out


def trails(db_url: str, message_ids: list[str]) -> str:
    """The trails of these messages, an event a line (wall-clock time, kind, actor, detail)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, at, kind, actor, detail FROM events "
                                        "WHERE message_id = ANY(:ids) ORDER BY id"), {"ids": message_ids}).all()
    finally:
        engine.dispose()
    return "\n".join(f"{mid} {at.timestamp():.1f} {kind} {actor} {detail[:300]}" for mid, at, kind, actor, detail in rows)


def all_settled(db_url: str) -> bool:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return not conn.execute(sa.text("SELECT count(*) FROM messages WHERE status NOT IN "
                                            "('DELIVERED', 'DEAD')")).scalar_one()
    finally:
        engine.dispose()


def frmo_answers(db_url: str) -> set[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT message_id FROM messages WHERE sender = 'frmo'")).scalars())
    finally:
        engine.dispose()


def test_a_broker_node_and_a_gateway_node_lost_mid_stream_lose_nothing(cluster: RabbitCluster, registry_keys: Path,
                                                                          tmp_path: Path) -> None:
    # Every tenth request answered 503: its retry (0.5 s on, above in_process_max_delay) waits in a retry queue.
    recipient = RecipientServer(name="clinic", script=[503 if i % 10 == 9 else 200 for i in range(2500)]).start()
    # ФРМО's first answer to each request: 503, Retry-After 20 s; so its deadline (3 s) passes first. The
    # script counts calls, not requests: a request node-b had in flight when it died is asked again by
    # node-a, and with ten 503s the tenth request then got a real answer within its deadline and no
    # TIMEOUT (9 of 10, twice). Five spare 503s cover those second calls; a retry that meets one of the
    # spares waits another 20 s, well within the settling below.
    frmo = FrmoEmulator(load_dataset(DEMO_DATASET), signer=demo_signer(registry_keys, "frmo"),
                        script=["http-503:20"] * 15).start()
    db = Database(PG_URL)
    prefix = "zlt-scale"
    config = write_config(tmp_path / "config", recipient.url, lease_ttl=LEASE_TTL, lease_renew=LEASE_RENEW,
                          in_process_max_delay=0.2, registry=(frmo.url, registry_keys))
    nodes = {name: GatewayNode(name, config, tmp_path, db_url=db.url, broker_urls=cluster.urls, prefix=prefix,
                               api_port=free_port()) for name in ("node-a", "node-b")}
    a, b = nodes["node-a"], nodes["node-b"]
    try:
        # node-b first, so that it holds the once-only duties when it is killed
        b.start().wait_ready()
        wait_for(lambda: all(leases(db.url).get(d, ("", False))[0].startswith("node-b:") for d in ("sweeper",
                                                                                                  "deadlines")),
                 "node-b holds the sweeper's and the deadline watcher's leases", 30)
        a.start().wait_ready()
        members = cluster.members(prefix)
        assert members and all(len(m) == 3 for m in members.values()), members  # quorum_replicas: 3

        load = SpreadLoad([a.base, b.base], count=2000, rate=40).start()
        load.wait_accepted(400)
        leaders = cluster.leaders(prefix)
        lead = max(set(leaders.values()), key=list(leaders.values()).count)  # the node leading most queues
        broker_node = cluster.node(lead)
        broker_killed = time.time()
        broker_node.kill()
        time.sleep(5)
        during = cluster.leaders(prefix)

        load.wait_accepted(1000)
        asking = time.monotonic()
        asked = [ask_frmo(a.base) for _ in range(10)]  # each owed a TIMEOUT in 3 s, by node-b's watcher
        asking = time.monotonic() - asking
        held_before = leases(db.url)["sweeper"][0]
        watching_before = leases(db.url)["deadlines"][0]
        node_killed = time.time()
        b.kill()
        killed_at, dead_by = time.monotonic(), time.time()  # node-b wrote nothing after dead_by
        taken_over = wait_for(lambda: leases(db.url).get("sweeper", ("", False))[0].startswith("node-a:"),
                              "node-a takes the sweeper lease over", LEASE_TTL + 4 * LEASE_RENEW + 10)
        wait_for(lambda: leases(db.url).get("deadlines", ("", False))[0].startswith("node-a:"),
                 "node-a takes the deadline watcher's lease over", LEASE_TTL + 4 * LEASE_RENEW + 10)
        watcher = time.monotonic() - killed_at
        deadlines_holder = leases(db.url)["deadlines"][0]
        time.sleep(max(0.0, 5 - (time.monotonic() - killed_at)))

        broker_node.start()  # it rejoins the cluster with its data directory
        b.start().wait_ready()
        load.wait(300)
        account = settle(db.url, load.accepted, timeout=240)
        # Each request's TIMEOUT, by name if one never comes, then those answers settled too.
        try:
            wait_for(lambda: all(deadlines_passed(db.url, asked).values()), "a TIMEOUT for each of the 10 requests", 90)
        except TimeoutError:
            print(trails(db.url, [m for m, sent in deadlines_passed(db.url, asked).items() if not sent]))
            raise
        wait_for(lambda: all_settled(db.url), "the registry requests and their answers settled", 180)
        timed_out = deadlines_passed(db.url, asked)
        answers = frmo_answers(db.url)
        check = a.cli("journal", "check", "--older-than", "30")
        keys = [r.idempotency_key for r in recipient.requests if r.idempotency_key]
        delivered_at = {k: r.at for k, r in recipient.accepted.items()}
        in_flight_b, worst_b = recovery(load.accept_at, delivered_at, broker_killed)
        in_flight_n, worst_n = recovery(load.accept_at, delivered_at, node_killed)
        slowest = max((m for m, t in load.accept_at.items() if t <= broker_killed and m in delivered_at),
                      key=delivered_at.__getitem__, default=None)
        if slowest is not None and in_flight_b > 20:  # what held it, for the report
            print(f"\nthe last delivered of those accepted before the broker node was killed (at {broker_killed:.1f}):")
            print(trails(db.url, [slowest]))
        reconnects = sum(n.log().count("broker connection lost") for n in nodes.values())
        print(f"\naccepted {account.accepted}, delivered {account.delivered}, lost {account.lost}, "
              f"repeats at the recipient {recipient.repeats}, client resends {load.retries}; "
              f"broker node killed: everything accepted before it delivered {in_flight_b:.1f} s later, worst "
              f"accept→delivered of the next 10 s {worst_b:.1f} s, {reconnects} consumer reconnections; "
              f"gateway node killed: {in_flight_n:.1f} s and {worst_n:.1f} s, the sweeper lease taken over "
              f"{taken_over:.1f} s after it; {account.parked} retries parked in the broker, "
              f"{account.parked_elsewhere} of them delivered by another process; the deadline watcher taken over "
              f"{watcher:.1f} s after it, {sum(map(len, timed_out.values()))} TIMEOUTs for {len(asked)} requests asked in {asking:.1f} s, "
              f"{sum(at < dead_by for sent in timed_out.values() for _, _, at in sent)} of them before the kill; "
              f"settled {account.settled_at - load.finished_at:.1f} s after the last accept")
        assert account.accepted == 2000 and not load.unexpected, load.unexpected[:5]
        assert account.lost == 0 and account.dead == 0, account.notes
        assert account.delivered == 2000
        assert account.missing_stages == 0, account.notes
        assert account.parked >= 150 and account.parked_elsewhere > 0, (account.parked, account.parked_elsewhere)
        # every delivery carried an accepted MessageID or a registry answer's, and each one arrived; a repeat
        # (recipient.repeats) carried its own key
        assert set(keys) == set(load.accepted) | answers and len(recipient.accepted) == 2000 + len(answers)
        # the deadline watcher ran once: one TIMEOUT per request
        assert all(len(sent) == 1 for sent in timed_out.values()), timed_out
        # A deadline that passed before node-b died is node-b's watcher's to answer (the ten asks took over
        # 3 s under load); every one after that, the watcher of the node that took the lease over.
        senders = {True: "registry-adapter:" + watching_before.split(":")[1],
                   False: "registry-adapter:" + deadlines_holder.split(":")[1]}
        assert all(actor == senders[at < dead_by] for sent in timed_out.values() for _, actor, at in sent), (
            senders, dead_by, timed_out)
        assert any(at > dead_by for sent in timed_out.values() for _, _, at in sent)  # the takeover answered
        assert len(answers) == 2 * len(asked)  # each request's TIMEOUT, then ФРМО's late answer
        assert held_before.startswith("node-b:") and watching_before.startswith("node-b:")
        assert lead not in during.values(), during  # the other two elected new leaders while it was down
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for node in nodes.values():
            node.stop()
        remove_topology(cluster.urls, prefix, ("lab", "clinic", "frmo"))
        recipient.stop()
        frmo.stop()
        db.drop()


def ask_frmo(base: str) -> str:
    """The clinic asks ФРМО whether an organisation is licensed; returns the request's MessageID."""
    import httpx

    mid = str(uuid.uuid1())
    r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": f"Bearer {CLINIC_TOKEN}"}, timeout=10, json={
        "messageId": mid, "sender": "clinic", "recipient": "frmo", "messageType": ORG,
        "payload": f'<ov:OrganisationVerificationRequest xmlns:ov="{ORG}"><ov:Oid>1.2.643.5.1.13.13.12.2.77.1001'
                   "</ov:Oid></ov:OrganisationVerificationRequest>"})
    assert r.status_code == 202, r.text
    return mid

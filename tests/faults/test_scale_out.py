"""Scale-out under faults: two gateway nodes on one PostgreSQL journal and a 3-node RabbitMQ cluster.

Under a steady load spread over both nodes' APIs, the RabbitMQ node that leads the
queues is SIGKILLed, then one whole gateway node (``zdravlink run`` and every process it
started) is SIGKILLed, then both come back. Every accepted message must be DELIVERED,
none lost; the recipient may see a repeat only with the message's own
Idempotency-Key; every tenth delivery is answered 503, and its retry is parked in the
broker's retry queues and comes back to whichever node's worker takes it; the killed
node's once-only duty (the sweeper) is taken over by the
other node once its lease runs out, and is never held by two at once.

The cluster is the test's own: three nodes with their own names, ports (5770-5779) and
data directories, joined with ``rabbitmqctl join_cluster``, removed at the end.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import PG_URL, free_port
from tests.support.rabbit_node import RabbitCluster
from tests.support.scale_out import (
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


def test_a_broker_node_and_a_gateway_node_lost_mid_stream_lose_nothing(cluster: RabbitCluster,
                                                                          tmp_path: Path) -> None:
    # Every tenth request answered 503: its retry (0.5 s on, above in_process_max_delay) waits in a retry queue.
    recipient = RecipientServer(name="clinic", script=[503 if i % 10 == 9 else 200 for i in range(2500)]).start()
    db = Database(PG_URL)
    prefix = "zlt-scale"
    config = write_config(tmp_path / "config", recipient.url, lease_ttl=LEASE_TTL, lease_renew=LEASE_RENEW,
                          in_process_max_delay=0.2)
    nodes = {name: GatewayNode(name, config, tmp_path, db_url=db.url, broker_urls=cluster.urls, prefix=prefix,
                               api_port=free_port()) for name in ("node-a", "node-b")}
    a, b = nodes["node-a"], nodes["node-b"]
    try:
        # node-b first, so that it holds the once-only duties when it is killed
        b.start().wait_ready()
        wait_for(lambda: leases(db.url).get("sweeper", ("", False))[0].startswith("node-b:"),
                 "node-b holds the sweeper lease", 30)
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
        held_before = leases(db.url)["sweeper"][0]
        node_killed = time.time()
        b.kill()
        killed_at = time.monotonic()
        taken_over = wait_for(lambda: leases(db.url).get("sweeper", ("", False))[0].startswith("node-a:"),
                              "node-a takes the sweeper lease over", LEASE_TTL + 4 * LEASE_RENEW + 10)
        time.sleep(max(0.0, 5 - (time.monotonic() - killed_at)))

        broker_node.start()  # it rejoins the cluster with its data directory
        b.start().wait_ready()
        load.wait(300)
        account = settle(db.url, load.accepted, timeout=240)
        check = a.cli("journal", "check", "--older-than", "30")
        keys = [r.idempotency_key for r in recipient.requests if r.idempotency_key]
        delivered_at = {k: r.at for k, r in recipient.accepted.items()}
        in_flight_b, worst_b = recovery(load.accept_at, delivered_at, broker_killed)
        in_flight_n, worst_n = recovery(load.accept_at, delivered_at, node_killed)
        reconnects = sum(n.log().count("broker connection lost") for n in nodes.values())
        print(f"\naccepted {account.accepted}, delivered {account.delivered}, lost {account.lost}, "
              f"repeats at the recipient {recipient.repeats}, client resends {load.retries}; "
              f"broker node killed: everything accepted before it delivered {in_flight_b:.1f} s later, worst "
              f"accept→delivered of the next 10 s {worst_b:.1f} s, {reconnects} consumer reconnections; "
              f"gateway node killed: {in_flight_n:.1f} s and {worst_n:.1f} s, the sweeper lease taken over "
              f"{taken_over:.1f} s after it; {account.parked} retries parked in the broker, "
              f"{account.parked_elsewhere} of them delivered by another process; "
              f"settled {account.settled_at - load.finished_at:.1f} s after the last accept")
        assert account.accepted == 2000 and not load.unexpected, load.unexpected[:5]
        assert account.lost == 0 and account.dead == 0, account.notes
        assert account.delivered == 2000
        assert account.missing_stages == 0
        assert account.parked >= 150 and account.parked_elsewhere > 0, (account.parked, account.parked_elsewhere)
        assert set(keys) == set(load.accepted)  # every delivery carried an accepted MessageID, each one arrived
        assert len(recipient.accepted) == 2000  # each once; a repeat (recipient.repeats) carried its own key
        assert held_before.startswith("node-b:")
        assert lead not in during.values(), during  # the other two elected new leaders while it was down
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for node in nodes.values():
            node.stop()
        remove_topology(cluster.urls, prefix)
        recipient.stop()
        db.drop()

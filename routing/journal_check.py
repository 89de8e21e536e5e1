"""``zdravlink journal check``: does the journal agree with itself and with the broker?

It lists what an operator must look at: messages stuck in a status (by the sweeper's
rule, plus ACCEPTED ones the outbox relay has not published), trails whose hash chain
does not verify, messages RabbitMQ dead-lettered that the journal does not yet show
DEAD (the poison queue), and copies in the dead letter queue whose message is no longer
dead there. ``--repair`` runs the reconciler over the poison queue, the sweeper once,
and prunes the dead letter queue; the check then runs again on what is left. A stuck
message whose copy a running worker may hold is swept only if it is still unchanged one
delivery attempt's timeout later, so ``--repair`` may take that long.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from gateway.config import GatewayConfig
from gateway.journal import Journal, Status, utcnow
from routing.broker import BROKER_ERRORS, ThreadPublisher, connect
from routing.deadletter import DeadLetterChannel
from routing.inspect import BrokerInspector
from routing.reconciler import Reconciler
from routing.replay import prune_dead_queue
from routing.sweeper import Sweeper
from routing.topology import Topology


@dataclass
class Findings:
    stuck: list[tuple[str, str]] = field(default_factory=list)        # (message id, why)
    broken_trails: list[str] = field(default_factory=list)
    unreconciled: int = 0          # in the poison queue: dead-lettered by RabbitMQ, not yet DEAD in the journal
    stale_dead_copies: int = 0     # in the dead letter queue, of messages no longer DEAD in that round
    broker_reachable: bool = True

    @property
    def clean(self) -> bool:
        return not (self.stuck or self.broken_trails or self.unreconciled) and self.broker_reachable


class JournalCheck:
    def __init__(self, config: GatewayConfig, journal: Journal, stuck_after_seconds: float) -> None:
        self.config = config
        self.journal = journal
        self.topology = Topology.of(config.settings.broker)
        self.broker = config.settings.broker.nodes
        self.inspector = BrokerInspector(self.broker, self.topology.all_queues(config.participants), ttl=0)
        self.sweeper = Sweeper(journal, self.topology, self.inspector.looks, stuck_after_seconds,
                               confirm_after_seconds=config.settings.delivery.timeout_seconds)
        self.stuck_after = stuck_after_seconds

    def run(self) -> Findings:
        found = Findings()
        found.broker_reachable = self.inspector.reachable()
        before = utcnow() - timedelta(seconds=self.stuck_after)
        for rec in self.journal.unchanged_since([Status.ACCEPTED], before, limit=10_000):
            found.stuck.append((rec.message_id, f"ACCEPTED for {(utcnow() - rec.updated_at).total_seconds():.0f} s: "
                                "the outbox relay (zdravlink serve) has not published it"))
        found.stuck += [(s.record.message_id, s.why) for s in self.sweeper.stuck(limit=10_000)]
        found.broken_trails = list(self.journal.broken_trails())
        found.unreconciled = self.inspector.depths().get(self.topology.poison_queue, 0)
        found.stale_dead_copies = self._stale_dead_copies()
        return found

    def _stale_dead_copies(self) -> int:
        """Copies in the dead letter queue whose message was replayed or delivered since (browsed, left in place)."""
        try:
            conn = connect(self.broker, "zl-journal-check", heartbeat=0)
        except BROKER_ERRORS:
            return 0
        stale = 0
        try:
            ch = conn.channel()
            while True:
                held = []
                for _ in range(500):
                    method, props, _body = ch.basic_get(self.topology.dead_queue, auto_ack=False)
                    if method is None:
                        break
                    held.append(props)
                if not held:
                    break
                records = self.journal.get_many([str(p.message_id) for p in held])
                for props in held:
                    rec = records.get(str(props.message_id))
                    generation = int((props.headers or {}).get("x-zl-generation", -1))
                    stale += rec is None or rec.status != Status.DEAD.value or generation != rec.generation
                if len(held) < 500:
                    break
            ch.basic_recover(requeue=True)
        finally:
            conn.close()
        return stale

    def repair(self) -> dict[str, int]:
        """The reconciler over the poison queue, the sweeper once, the dead letter queue pruned."""
        publisher = ThreadPublisher(self.broker, "zl-journal-repair")
        reconciler = Reconciler(self.config, self.journal,
                                DeadLetterChannel(self.journal, self.topology, publisher, "journal-check"))
        reconciled = 0
        try:
            conn = connect(self.broker, "zl-journal-repair", heartbeat=0)
            try:
                ch = conn.channel()
                while True:
                    method, props, body = ch.basic_get(self.topology.poison_queue, auto_ack=False)
                    if method is None:
                        break
                    reconciler.handle(body, props)
                    ch.basic_ack(method.delivery_tag)
                    reconciled += 1
            finally:
                conn.close()
        finally:
            publisher.close()
        swept = len(self.sweeper.sweep_once())
        if self.sweeper.awaiting_confirmation:  # a running worker may hold their copies: look again after one attempt
            time.sleep(self.sweeper.confirm_after)
            swept += len(self.sweeper.sweep_once())
        pruned = prune_dead_queue(self.broker, self.topology, self.journal)
        return {"reconciled": reconciled, "swept": swept, "pruned": pruned}

"""Several API processes on one port (SO_REUSEPORT) and one PostgreSQL journal: both take requests,
their relays share the outbox, and every message is delivered once."""
from __future__ import annotations

import os
import time

import httpx
import pytest

from demo.emulators.rest_recipient import RecipientServer
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (from /proc: the two processes share
    the port, so a connection cannot tell them apart)."""
    try:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except FileNotFoundError:
        return False
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(r[3] == "0A" and int(r[1].split(":")[1], 16) == port and f"socket:[{r[9]}]" in sockets for r in rows)


def test_two_api_processes_share_the_port_and_the_outbox(gateway_factory, tmp_path):
    from tests.conftest import PG_URL, _pg_database

    databases = _pg_database(PG_URL)
    db_url = next(databases)
    clinic = RecipientServer(name="clinic").start()
    gw = None
    try:
        gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=configs.settings(),
                             db_url=db_url)
        second = gw.spawn("api-2")
        # the messages below take a few seconds: the second process must be listening before they start
        wait_for(lambda: listens(second.pid, gw.port), timeout=30, what="the second API process to listen")
        bodies = [envelope_json("lab", "clinic") for _ in range(200)]
        # A new connection each time (no keep-alive): the kernel spreads connections, not requests. One
        # client for all: httpx.post would build an SSL context per call, 30 ms of CPU each.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for body in bodies:
                r = http.post(f"{gw.base}/api/v1/messages", json=body, headers={"Authorization": f"Bearer {LAB_TOKEN}"})
                assert r.status_code == 202, r.text
        wait_for(lambda: len(clinic.accepted) == len(bodies), timeout=60, what="every message delivered")
        assert sorted(clinic.accepted) == sorted(b["messageId"] for b in bodies) and clinic.repeats == 0
        pids = {gw.procs["api"].pid, gw.procs["api-2"].pid}
        accepting = {int(f.stem.split("_")[-1]) for f in (gw.dir / "metrics").glob("counter_*.db")} & pids
        assert accepting == pids, "both API processes accepted messages"
    finally:
        if gw is not None:
            gw.stop()  # before its database goes
        clinic.stop()
        next(databases, None)


def test_two_api_processes_hold_a_participant_to_one_rate_limit(gateway_factory):
    """Each process used to keep its own buckets, so a lab spread over both got twice its limit."""
    from tests.conftest import PG_URL, _pg_database

    databases = _pg_database(PG_URL)
    db_url = next(databases)
    clinic = RecipientServer(name="clinic").start()
    rate, burst = 1.0, 10
    participants = configs.participants(clinic.url).replace(
        "    kind: lis\n", f"    kind: lis\n    rate_limit: {{messages_per_second: {rate}, burst: {burst}}}\n", 1)
    gw = None
    try:
        gw = gateway_factory(participants, configs.routes(), settings=configs.settings(), db_url=db_url)
        second = gw.spawn("api-2")
        wait_for(lambda: listens(second.pid, gw.port), timeout=30, what="the second API process to listen")
        answers = []
        began = time.monotonic()
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:  # spread over both
            for _ in range(4 * burst):
                r = http.post(f"{gw.base}/api/v1/messages", json=envelope_json("lab", "clinic"),
                              headers={"Authorization": f"Bearer {LAB_TOKEN}"})
                answers.append(r.status_code)
        took = time.monotonic() - began
        admitted = answers.count(202)
        assert set(answers) == {202, 429}, answers
        # One pair of buckets for the host: the burst, and what the rate refilled while the test sent.
        assert burst <= admitted <= burst + rate * took + 1, (admitted, took)
        pids = {gw.procs["api"].pid, gw.procs["api-2"].pid}
        answering = {int(f.stem.split("_")[-1]) for f in (gw.dir / "metrics").glob("counter_*.db")} & pids
        assert answering == pids, "both API processes answered the lab"
        wait_for(lambda: len(clinic.accepted) == admitted, timeout=60, what="every admitted message delivered")
    finally:
        if gw is not None:
            gw.stop()
        clinic.stop()
        next(databases, None)

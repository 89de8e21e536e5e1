"""The SMEV 3 SOAP service against the REST API on the same gateway, in the same run.

Starts the gateway's API process (spyne behind a2wsgi inside uvicorn, outbox relay
to the real RabbitMQ) on a temporary configuration, then ``--concurrency`` clients
with keep-alive connections send ``--messages`` notices each way:

- SOAP: SendRequest signed with the laboratory's GOST key (CallerInformationSystemSignature),
  answered with MessageMetadata signed by the gateway (SMEVSignature);
- REST: the same notice as a JSON envelope with the laboratory's GOST SenderSignature;

and prints accepted/s for both and their ratio, then GetRequest+Ack round trips/s.
Requests are built and signed before the clock starts.

    .venv/bin/python bench/bench_smev.py [--messages 400] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.soap import smev_client as smev
from demo.ca import create_demo_keys, demo_signer
from gateway.envelope import Envelope
from gateway.xmlsafe import parse_xml
from signing import sign
from tests.conftest import AMQP_URL, free_port
from tests.integration.test_smev_soap import LAB_TOKEN, write_config
from tests.support.gateway_proc import NOTICE_NS, GatewayProcesses, notice


def rate(posts: list[tuple[str, bytes, dict[str, str]]], base: str, concurrency: int) -> tuple[float, int]:
    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(concurrency)]
    ok = 0

    def send(i: int) -> bool:
        path, body, headers = posts[i]
        return clients[i % concurrency].post(path, content=body, headers=headers).status_code in (200, 202)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ok = sum(pool.map(send, range(len(posts))))
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    return len(posts) / elapsed, ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zl-bench-smev-"))
    keys = tmp / "keys"
    create_demo_keys(keys, ["gateway", "lab", "clinic", "insurer"], ["gost2012-256", "rsa"])
    cfg = write_config(tmp / "cfg", keys)
    gw = GatewayProcesses(tmp / "gw", (cfg / "participants.yaml").read_text(), (cfg / "routes.yaml").read_text(),
                          settings=(cfg / "gateway.yaml").read_text().replace("pull_lock_seconds: 1.0",
                                                                               "pull_lock_seconds: 300"),
                          amqp_url=AMQP_URL, db_url=None, api_port=free_port(), delivery_workers=1)
    gw.spawn("api")
    gw.wait_ready()
    lab = demo_signer(keys, "lab")
    soap_headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "urn:SendRequest"}
    soap_posts = [("/smev/1.1", smev.soap(smev.send_request(notice(), by=lab)), soap_headers)
                  for _ in range(args.messages)]
    rest_posts = []
    for _ in range(args.messages):
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NOTICE_NS,
                       payload=parse_xml(notice().encode()))
        env.sender_signature = sign(env.sender_data_element(), lab)
        rest_posts.append(("/api/v1/messages", env.to_xml(),
                           {"Content-Type": "application/xml", "Authorization": f"Bearer {LAB_TOKEN}"}))
    try:
        soap_rate, soap_ok = rate(soap_posts, gw.base, args.concurrency)
        rest_rate, rest_ok = rate(rest_posts, gw.base, args.concurrency)
        print(f"{args.messages} signed notices, {args.concurrency} clients, SQLite journal, one API process")
        print(f"  SOAP SendRequest: {soap_rate:7.1f} accepted/s ({soap_ok} ok)")
        print(f"  REST POST:        {rest_rate:7.1f} accepted/s ({rest_ok} ok)")
        print(f"  SOAP / REST:      {soap_rate / rest_rate:7.2f}")
        # Park what was accepted in the clinic's inbox, as the delivery worker would, then pull it.
        from gateway.journal import Journal, Status
        from gateway.journal.inbox import Inbox
        journal = Journal(gw.db_url)
        inbox = Inbox(journal)
        for mid in [*journal.with_status(Status.ACCEPTED), *journal.with_status(Status.PUBLISHED)]:
            inbox.park(journal.get(mid), "bench", "default")
        clinic = demo_signer(keys, "clinic")
        n, t0 = 0, time.perf_counter()
        with httpx.Client(base_url=gw.base, timeout=30) as http:
            headers = {"Content-Type": "text/xml; charset=utf-8"}
            while n < 200:
                r = http.post("/smev/1.1", content=smev.soap(smev.get_request(by=clinic)),
                              headers={**headers, "SOAPAction": "urn:GetRequest"})
                mid = parse_xml(r.content).findtext(f".//{smev.T}SenderProvidedRequestData/{smev.T}MessageID")
                if mid is None:
                    break
                http.post("/smev/1.1", content=smev.soap(smev.ack(mid, by=clinic)),
                          headers={**headers, "SOAPAction": "urn:Ack"})
                n += 1
        print(f"  GetRequest + Ack: {n / (time.perf_counter() - t0):7.1f} round trips/s (one client, {n} messages,"
              " requests signed inside the loop)")
        journal.engine.dispose()
    finally:
        gw.stop()


if __name__ == "__main__":
    main()

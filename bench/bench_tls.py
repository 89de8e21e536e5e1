"""Accept throughput over plain HTTP, TLS, mTLS and GOST TLS in the same run (docs/PERFORMANCE.md).

For each transport a whole gateway (API + relay, router, a delivery worker) starts on a
temporary configuration with certificates from a demo CA made for the run, and
``--concurrency`` clients post ``--messages`` notices (2 KB) as fast as they are answered:

- ``keep-alive``: each client keeps its connection, so the handshake is paid once per
  client and what remains is the record layer (encryption, MAC) and, with mTLS, the
  per-request check of the client certificate against participants.yaml;
- ``new connection``: ``Connection: close`` on every request, so every message pays a
  full handshake (and, with mTLS, the client certificate's chain and CRL check).

Transports: ``plain``; ``tls`` (RSA 2048 server certificate, TLS 1.3); ``mtls`` (the same, and
the lab's RSA client certificate required beside its token); ``gost-mtls`` (GOST TLS 1.2,
GOST2012-KUZNYECHIK-KUZNYECHIKOMAC, GOST R 34.10-2012 256 server certificate, the lab's
client certificate). Only accepting is timed (HTTP 202s per second); delivery runs
meanwhile, as in production, and every accepted message is checked delivered afterwards.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.ca import DemoCA
from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from gateway.tls import ClientTls, client_context
from tests.conftest import AMQP_URL, free_port
from tests.support.gateway_proc import GatewayProcesses, envelope_json, notice

TOKEN = "bench-lab-token"
MODES = ("plain", "tls", "mtls", "gost-mtls")


def make_keys(out: Path) -> Path:
    rsa = DemoCA.create(out / "tls-ca", key_type="rsa", subject="/O=Zdravlink bench/CN=Bench TLS CA")
    gost = DemoCA.create(out / "gost-ca", subject="/O=Zdravlink bench/CN=Bench GOST CA")
    rsa.issue(out, "api", "rsa", tls="server")
    gost.issue(out, "api", "gost2012-256", tls="server")
    rsa.issue(out, "lab", "rsa", tls="client")
    (out / "clients").mkdir()
    shutil.copyfile(rsa.cert, out / "clients" / "ca.pem")
    rsa.write_crl(out / "clients" / "ca.crl")
    (out / "bundle.pem").write_bytes(rsa.cert.read_bytes() + gost.cert.read_bytes())
    return out


def configuration(mode: str, keys: Path, clinic_url: str) -> tuple[str, str, str]:
    certs = f'\n      client_certificates: [{{file: "{keys / "lab-rsa.pem"}"}}]' if "mtls" in mode else ""
    participants = f"""
participants:
  - mnemonic: lab
    name: Bench laboratory
    kind: lis
    delivery: {{mode: pull}}
    credentials:
      api_tokens: [{{sha256: "{hash_token(TOKEN)}"}}]{certs}
  - mnemonic: clinic
    name: Bench clinic
    kind: mis
    delivery: {{mode: rest, url: "{clinic_url}"}}
"""
    routes = ('routes:\n  - {name: notices, sender: lab, message_type: "urn://zdravlink/types/notice/1.0", '
              "recipient: clinic}\n")
    settings = "relay: {batch_size: 200, poll_interval_seconds: 0.1}\ndelivery: {timeout_seconds: 5.0}\n"
    if mode != "plain":
        tls = f'certificate: "{keys / "api-rsa.pem"}", key: "{keys / "api-rsa.key"}"'
        if "mtls" in mode:
            tls += f', client_ca: "{keys / "clients"}"'
        if mode.startswith("gost"):
            tls += f', gost: {{certificate: "{keys / "api-gost2012-256.pem"}", key: "{keys / "api-gost2012-256.key"}"}}'
        settings += f"api: {{tls: {{{tls}}}}}\n"
    return participants, routes, settings


def client_ssl(mode: str, keys: Path) -> ssl.SSLContext | bool:
    if mode == "plain":
        return False
    cert = ({"certificate": str(keys / "lab-rsa.pem"), "key": str(keys / "lab-rsa.key")} if "mtls" in mode else {})
    return client_context(ClientTls(ca=[str(keys / "bundle.pem")], system_ca=False, gost=mode.startswith("gost"),
                                    **cert), keys)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat): what the work cost, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(gw: GatewayProcesses, verify: ssl.SSLContext | bool, n: int, concurrency: int, *,
        reuse: bool, size: int) -> tuple[float, float, list[str]]:
    """(accepted/s, the API process's CPU ms per accepted message, the MessageIDs)."""
    payload = notice(text=("Результат анализа в норме. " * (size // 40 + 1))[: size // 2])
    bodies = [envelope_json("lab", "clinic", payload=payload) for _ in range(n)]
    headers = {"Authorization": f"Bearer {TOKEN}", **({} if reuse else {"Connection": "close"})}
    client = httpx.Client(base_url=gw.base, timeout=30, verify=verify,
                          limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
    try:
        client.get("/healthz")  # one connection up before the clock starts
        api = gw.procs["api"].pid
        cpu0 = cpu_seconds(api)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(lambda b: client.post("/api/v1/messages", json=b, headers=headers).status_code,
                                  bodies))
        took = time.perf_counter() - t0
        cpu = cpu_seconds(api) - cpu0
    finally:
        client.close()
    assert codes.count(202) == n, {c: codes.count(c) for c in set(codes)}
    return n / took, cpu * 1000 / n, [b["messageId"] for b in bodies]


def start(mode: str, keys: Path) -> tuple[GatewayProcesses, RecipientServer, ssl.SSLContext | bool, str]:
    clinic = RecipientServer(name=f"clinic-{mode}").start()
    tmp = Path(tempfile.mkdtemp(prefix=f"zl-bench-{mode}-"))
    participants, routes, settings = configuration(mode, keys, clinic.url)
    gw = GatewayProcesses(tmp / "gw", participants, routes, settings=settings, amqp_url=AMQP_URL, db_url=None,
                          api_port=free_port(), delivery_workers=1)
    verify = client_ssl(mode, keys)
    if mode != "plain":
        gw.http.close()
        gw.base = f"https://localhost:{gw.port}"
        gw.http = httpx.Client(base_url=gw.base, timeout=10, verify=verify)
    gw.start()
    negotiated = "-"
    if isinstance(verify, ssl.SSLContext):
        with socket.create_connection(("127.0.0.1", gw.port)) as raw, \
                verify.wrap_socket(raw, server_hostname="localhost") as tls:
            negotiated = f"{tls.version()} {tls.cipher()[0]}"
    return gw, clinic, verify, negotiated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1200, help="per transport, keep-alive (over all rounds)")
    ap.add_argument("--handshakes", type=int, default=480, help="per transport, a new connection each")
    ap.add_argument("--rounds", type=int, default=4, help="the transports take turns this many times")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    modes = args.modes.split(",")
    keys = make_keys(Path(tempfile.mkdtemp(prefix="zl-bench-tls-")) / "keys")
    print(f"Zdravlink transport benchmark: {args.concurrency} clients, {args.size // 1024} KB notices, "
          f"{args.messages} keep-alive + {args.handshakes} new-connection posts per transport in {args.rounds} "
          f"rounds taken in turn, SQLite journal, 1 delivery worker each, {os.cpu_count()} CPUs, "
          f"{ssl.OPENSSL_VERSION}, {dt.date.today()}", flush=True)
    running = {mode: start(mode, keys) for mode in modes}  # all up at once: the turns share the same load
    kept: dict[str, list[float]] = {m: [] for m in modes}
    fresh: dict[str, list[float]] = {m: [] for m in modes}
    cpu_kept: dict[str, list[float]] = {m: [] for m in modes}
    cpu_fresh: dict[str, list[float]] = {m: [] for m in modes}
    ids: dict[str, list[str]] = {m: [] for m in modes}
    loads = []
    try:
        for _ in range(args.rounds):
            for mode in modes:
                gw, _clinic, verify, _ = running[mode]
                loads.append(os.getloadavg()[0])
                rate, cpu, sent = run(gw, verify, args.messages // args.rounds, args.concurrency, reuse=True,
                                      size=args.size)
                kept[mode].append(rate)
                cpu_kept[mode].append(cpu)
                ids[mode] += sent
                rate, cpu, sent = run(gw, verify, args.handshakes // args.rounds, args.concurrency, reuse=False,
                                      size=args.size)
                fresh[mode].append(rate)
                cpu_fresh[mode].append(cpu)
                ids[mode] += sent
        for mode in modes:
            clinic = running[mode][1]
            deadline = time.monotonic() + 300
            while not set(ids[mode]) <= clinic.accepted.keys():
                assert time.monotonic() < deadline, f"{mode}: not everything accepted was delivered"
                time.sleep(0.1)
    finally:
        for gw, clinic, _, _ in running.values():
            gw.stop()
            clinic.stop()
    print(f"load average during the turns: {min(loads):.1f}–{max(loads):.1f}; medians of the rounds "
          "(min–max), every accepted message delivered")
    print(f"{'transport':>10} {'keep-alive/s':>20} {'API CPU ms/msg':>15} {'new connection/s':>20} "
          f"{'API CPU ms/msg':>15}  negotiated")
    for mode in modes:
        k, f = kept[mode], fresh[mode]
        print(f"{mode:>10} {statistics.median(k):>8.0f} ({min(k):>4.0f}–{max(k):<4.0f}) "
              f"{statistics.median(cpu_kept[mode]):>15.2f} "
              f"{statistics.median(f):>8.0f} ({min(f):>4.0f}–{max(f):<4.0f}) "
              f"{statistics.median(cpu_fresh[mode]):>15.2f}  {running[mode][3]}", flush=True)


if __name__ == "__main__":
    main()

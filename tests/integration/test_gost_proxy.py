"""The GOST TLS proxy pattern of deploy/gost-proxy/, run as written: stunnel in front and behind a plain gateway.

Where the gateway must not do GOST TLS itself (certified crypto required), partners' GOST TLS
ends at a proxy in front of a loopback gateway, and deliveries leave through a local proxy that
opens GOST TLS to the partner (docs/transport-security.md#gost-tls). The stunnel files in
deploy/gost-proxy/ are rendered with this test's ports and files only (every value replaced is
checked to be there, so the files cannot drift from what is tested) and run with Debian's
stunnel4 and OpenSSL's GOST engine:

- a partner with its GOST client certificate posts over GOST TLS 1.2 through the inbound proxy:
  accepted, and delivered through the outbound proxy to a recipient that speaks GOST TLS only and
  requires the gateway's client certificate;
- without a client certificate, or with a revoked one, the proxy refuses the handshake and the
  gateway sees nothing.
"""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo.ca import DemoCA
from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from gateway.journal import Journal
from gateway.tls import GOST_CIPHERS, ClientTls, client_context, ensure_engine
from tests.conftest import AMQP_URL
from tests.support.gateway_proc import REPO, GatewayProcesses, envelope_json
from tests.support.ports import free_port

# One worker runs the module: its tests share the module's gateway (spread, each worker started one).
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("gost_proxy")]  # and Debian's stunnel4, which scripts/test installs

DEPLOY = REPO / "deploy" / "gost-proxy"
TOKEN = "gost-partner-token"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GOST CA: the gateway's server and client certificates, the partner's (one revoked), the clinic's server."""
    out = tmp_path_factory.mktemp("gost-proxy")
    ca = DemoCA.create(out / "ca", subject="/O=Zdravlink demo/CN=GOST TLS CA")
    ca.issue(out, "gateway-api", "gost2012-256", tls="server")
    ca.issue(out, "gateway-client", "gost2012-256", tls="client")
    ca.issue(out, "clinic-server", "gost2012-256", tls="server")
    ca.issue(out, "partner", "gost2012-256", tls="client")
    ca.issue(out, "partner-revoked", "gost2012-256", tls="client")
    ca.revoke(out / "partner-revoked-gost2012-256.pem")
    ca.write_crl(out / "ca.crl")
    shutil.copyfile(ca.cert, out / "ca.pem")
    return out


def render(name: str, values: dict[str, str], out: Path) -> Path:
    text = (DEPLOY / name).read_text(encoding="utf-8")
    for old, new in values.items():
        assert old in text, f"{name} no longer has {old!r}: update this test with it"
        text = text.replace(old, new)
    path = out / name
    path.write_text(text, encoding="utf-8")
    return path


class Stunnel:
    def __init__(self, conf: Path, port: int) -> None:
        self.log = conf.with_suffix(".log")
        self.proc = subprocess.Popen(["stunnel4", str(conf)], stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def clinic(keys: Path) -> Iterator[RecipientServer]:
    """A recipient that speaks GOST TLS only and requires a client certificate from the CA."""
    ensure_engine()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(GOST_CIPHERS)
    ctx.load_cert_chain(keys / "clinic-server-gost2012-256.pem", keys / "clinic-server-gost2012-256.key")
    ctx.load_verify_locations(keys / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = RecipientServer(name="clinic", tls=ctx).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, keys: Path,
          clinic: RecipientServer) -> Iterator[tuple[GatewayProcesses, int]]:
    tmp = tmp_path_factory.mktemp("gost-proxy-run")
    api_port, inbound_port, outbound_port = free_port(), free_port(), free_port()
    outbound = render("stunnel-outbound.conf", {
        "127.0.0.1:8801": f"127.0.0.1:{outbound_port}",
        "connect = mis.clinic.example:443": f"connect = 127.0.0.1:{clinic.port}",
        "checkHost = mis.clinic.example": "checkHost = localhost",
        "sni = mis.clinic.example": "sni = localhost",
        "/etc/zdravlink/tls/partner-clinic-ca.pem": str(keys / "ca.pem"),
        "/etc/zdravlink/tls/gateway-client-gost.pem": str(keys / "gateway-client-gost2012-256.pem"),
        "/etc/zdravlink/tls/gateway-client-gost.key": str(keys / "gateway-client-gost2012-256.key"),
    }, tmp)
    inbound = render("stunnel-inbound.conf", {
        "0.0.0.0:8443": f"127.0.0.1:{inbound_port}",
        "127.0.0.1:8700": f"127.0.0.1:{api_port}",
        "/etc/zdravlink/tls/gateway-api-gost.pem": str(keys / "gateway-api-gost2012-256.pem"),
        "/etc/zdravlink/tls/gateway-api-gost.key": str(keys / "gateway-api-gost2012-256.key"),
        "/etc/zdravlink/tls/partners-ca.pem": str(keys / "ca.pem"),
        "/etc/zdravlink/tls/partners-ca.crl": str(keys / "ca.crl"),
    }, tmp)
    participants = render("participants.yaml.example", {
        "0" * 64: hash_token("clinic-token"),
        "http://127.0.0.1:8801/": f"http://127.0.0.1:{outbound_port}/",
    }, tmp).read_text(encoding="utf-8") + f"""
  - mnemonic: partner
    name: A partner that speaks GOST TLS
    kind: lis
    delivery: {{mode: pull}}
    credentials: {{api_tokens: [{{sha256: "{hash_token(TOKEN)}"}}]}}
"""
    routes = ('routes:\n  - {name: notices, sender: partner, message_type: "urn://zdravlink/types/notice/1.0", '
              "recipient: clinic}\n"
              "defaults:\n  retry: {attempts: 2, initial_delay: 0.05, multiplier: 1.0, jitter: 0.0, max_delay: 0.1}\n")
    settings = ((DEPLOY / "gateway.yaml.example").read_text(encoding="utf-8")
                + "relay: {batch_size: 200, poll_interval_seconds: 0.1}\ndelivery: {timeout_seconds: 5.0}\n")
    proxies = [Stunnel(outbound, outbound_port), Stunnel(inbound, inbound_port)]
    gw = GatewayProcesses(tmp / "gw", participants, routes, settings=settings, amqp_url=AMQP_URL, db_url=None,
                          api_port=api_port, delivery_workers=1)
    try:
        gw.start()
        yield gw, inbound_port
    finally:
        gw.stop()
        for proxy in proxies:
            proxy.stop()


def partner(keys: Path, name: str | None) -> ssl.SSLContext:
    cert = ({"certificate": str(keys / f"{name}-gost2012-256.pem"), "key": str(keys / f"{name}-gost2012-256.key")}
            if name else {})
    return client_context(ClientTls(ca=[str(keys / "ca.pem")], system_ca=False, gost=True, **cert), keys)


def test_a_partners_gost_tls_call_goes_through_both_proxies_and_is_delivered(world, keys, clinic):
    gw, port = world
    ctx = partner(keys, "partner")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert (tls.version(), tls.cipher()[0]) == ("TLSv1.2", "GOST2012-KUZNYECHIK-KUZNYECHIKOMAC")
    with httpx.Client(base_url=f"https://localhost:{port}", verify=ctx, timeout=10) as http:
        r = http.post("/api/v1/messages", json=envelope_json("partner", "clinic"),
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202, r.text
    gw.wait_status(r.json()["messageId"], TOKEN, "DELIVERED")
    assert r.json()["messageId"] in clinic.accepted
    # the GOST-only clinic saw the gateway's client certificate, presented by the outbound proxy
    assert clinic.client_subjects[-1] == "organizationName=Zdravlink demo,commonName=gateway-client"


@pytest.mark.parametrize("presented", [None, "partner-revoked"])
def test_the_inbound_proxy_refuses_a_partner_without_a_good_certificate(world, keys, presented):
    gw, port = world
    before = Journal(gw.db_url)
    try:
        seen = len(before.rejections(500))
    finally:
        before.engine.dispose()
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)), \
            httpx.Client(base_url=f"https://localhost:{port}", verify=partner(keys, presented), timeout=10) as http:
        http.post("/api/v1/messages", json=envelope_json("partner", "clinic"),
                  headers={"Authorization": f"Bearer {TOKEN}"})
    after = Journal(gw.db_url)
    try:
        assert len(after.rejections(500)) == seen  # it never reached the gateway
    finally:
        after.engine.dispose()

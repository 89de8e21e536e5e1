"""Transport security end to end: real TLS handshakes on 127.0.0.1, certificates from the demo CA.

A whole gateway (API, router, delivery worker, MLLP listener as processes) serves TLS
with client certificates on the API (REST and the SMEV endpoint) and on MLLP. The lab
must present its own client certificate together with its token; each way of getting
that wrong is refused with its own code and audited: none, another participant's, one
expired, one revoked, one from a CA the gateway does not know. The clinic receives by
REST over TLS and requires the gateway's client certificate; a recipient whose
certificate names another host is refused, however valid its chain.
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pytest
from lxml import etree

from adapters.hl7v2.mllp import FrameReader, frame
from adapters.hl7v2.oru import LAB_RESULT_NS, message_id_for
from adapters.soap import smev_client as smev
from adapters.soap.smev_schema import SOAP_ENV_NS
from demo.ca import DemoCA
from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from gateway.journal import Journal
from gateway.tls import ClientTls, client_context
from tests.conftest import AMQP_URL
from tests.support.gateway_proc import NOTICE_NS, GatewayProcesses, envelope_json, notice
from tests.support.ports import free_port

# One gateway serves the module (see ``gw``): the group asks ``--dist loadgroup`` to run its tests on one worker.
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("transport_security")]

LAB_TOKEN, CLINIC_TOKEN = "lab-tls-token", "clinic-tls-token"
GATEWAY_CLIENT = "organizationName=Zdravlink demo,commonName=gateway-client"
CLIENTS = ("lab", "clinic", "lab-revoked", "lab-expired")


@pytest.fixture(scope="module")
def tls_keys(demo_keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TLS certificates from an RSA demo CA (as the Russian Trusted Root CA is RSA), one revoked, one expired,
    one from a CA nobody trusts; the gateway's GOST server certificate from the GOST demo CA. ``clients/`` is
    the client CA store (CA and CRL), ``ca-bundle.pem`` what partners trust (both CAs)."""
    out = tmp_path_factory.mktemp("tls")
    ca = DemoCA.create(out / "tls-ca", key_type="rsa", subject="/O=Zdravlink demo/CN=Zdravlink Demo TLS CA")
    now = dt.datetime.now(dt.UTC)
    ca.issue(out, "gateway-api", "rsa", tls="server")
    DemoCA(demo_keys / "ca").issue(out, "gateway-api", "gost2012-256", tls="server")
    ca.issue(out, "clinic-server", "rsa", tls="server")
    ca.issue(out, "elsewhere", "rsa", tls="server", hosts=("partner.example",))
    ca.issue(out, "gateway-client", "rsa", tls="client")
    for name in ("lab", "clinic", "lab-revoked"):
        ca.issue(out, name, "rsa", tls="client")
    ca.issue(out, "lab-expired", "rsa", tls="client", not_before=now - dt.timedelta(days=30),
             not_after=now - dt.timedelta(days=1))
    ca.revoke(out / "lab-revoked-rsa.pem")
    DemoCA.create(out / "rogue-ca", key_type="rsa", subject="/O=Nobody/CN=Rogue CA").issue(out, "lab-rogue", "rsa",
                                                                                          tls="client")
    (out / "clients").mkdir()
    shutil.copyfile(ca.cert, out / "clients" / "demo-ca.pem")
    ca.write_crl(out / "clients" / "demo-ca.crl")
    (out / "ca-bundle.pem").write_bytes(ca.cert.read_bytes() + (demo_keys / "ca" / "ca.pem").read_bytes())
    return out


def client(keys: Path, name: str | None = None, *, gost: bool = False) -> ssl.SSLContext:
    """A partner's TLS context: trusts the demo CAs, presents ``<name>-rsa.pem`` if named."""
    cert = {"certificate": str(keys / f"{name}-rsa.pem"), "key": str(keys / f"{name}-rsa.key")} if name else {}
    return client_context(ClientTls(ca=[str(keys / "ca-bundle.pem")], system_ca=False, gost=gost, **cert), keys)


def clinic_inbox(keys: Path) -> RecipientServer:
    """The clinic's HTTPS inbox, started; it requires a client certificate from the demo CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(keys / "clinic-server-rsa.pem", keys / "clinic-server-rsa.key")
    ctx.load_verify_locations(keys / "clients" / "demo-ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return RecipientServer(name="clinic", tls=ctx).start()


@pytest.fixture(scope="module")
def clinic(tls_keys: Path) -> Iterator[RecipientServer]:
    """The inbox the shared gateway (``gw``) delivers to, shared with it: it records every test's deliveries."""
    server = clinic_inbox(tls_keys)
    yield server
    server.stop()


def participants(keys: Path, clinic_url: str, clinic_tls: str) -> str:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    return f"""
participants:
  - mnemonic: lab
    name: Laboratory
    kind: lis
    delivery: {{mode: pull}}
    credentials:
      api_tokens: [{{sha256: "{hash_token(LAB_TOKEN)}"}},
                   {{sha256: "{hash_token('lab-old-token')}", expires: "{past}", label: old}}]
      client_certificates: [{{file: "{keys / 'lab-rsa.pem'}"}}]
  - mnemonic: clinic
    name: Clinic
    kind: mis
    credentials:
      api_token_sha256: ["{hash_token(CLINIC_TOKEN)}"]
      client_certificates: [{{subject: "CN=clinic,O=Zdravlink demo", issuer: "CN=Zdravlink Demo TLS CA,O=Zdravlink demo"}}]
    delivery: {{mode: rest, url: "{clinic_url}", tls: {clinic_tls}}}
"""


ROUTES = f"""
routes:
  - {{name: notices, sender: lab, message_type: "{NOTICE_NS}", recipient: clinic}}
  - {{name: results, sender: lab, message_type: "{LAB_RESULT_NS}", recipient: clinic}}
defaults:
  retry: {{attempts: 2, initial_delay: 0.05, multiplier: 1.0, jitter: 0.0, max_delay: 0.1}}
"""


def settings(keys: Path) -> str:
    api = keys / "gateway-api"
    tls = (f'{{certificate: "{api}-rsa.pem", key: "{api}-rsa.key", client_ca: "{keys / "clients"}", '
           f'gost: {{certificate: "{api}-gost2012-256.pem", key: "{api}-gost2012-256.key"}}}}')
    return (f"api: {{tls: {tls}}}\nhl7: {{tls: {tls}}}\n"
            "relay: {batch_size: 200, poll_interval_seconds: 0.1}\n"
            "delivery: {timeout_seconds: 5.0}\n")


MAPPING = ("lab: lab\nidentify: {sending_facility: [TLSLAB]}\nrecipient: {fixed: clinic}\n"
           "fields: {patient: {local_id: PID-3.1}}\n"
           "tests: {HGB: {fsli: '1017128', display: Гемоглобин общий, unit: {code: g/L}}}\n")


def start(tmp_path: Path, keys: Path, clinic_url: str, clinic_tls: str) -> GatewayProcesses:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "lab.yaml").write_text(MAPPING, encoding="utf-8")
    gw = GatewayProcesses(tmp_path / "gw", participants(keys, clinic_url, clinic_tls), ROUTES,
                          settings=settings(keys), amqp_url=AMQP_URL,
                          db_url=None, api_port=free_port(), delivery_workers=1, mappings=mappings,
                          mllp_port=free_port())
    gw.http.close()
    gw.base = f"https://localhost:{gw.port}"
    gw.http = httpx.Client(base_url=gw.base, timeout=10, verify=client(keys, "lab"))
    gw.start()
    return gw


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tls_keys: Path,
       clinic: RecipientServer) -> Iterator[GatewayProcesses]:
    """The TLS gateway, shared by the module's tests: a gateway is 4-5 processes and seconds to start, and
    nothing these tests do changes its configuration. Its journal, audit and clinic therefore hold the other
    tests' traffic too, so a test checks only its own: its message id, or the refusals after its ``audit_mark``."""
    gateway_client = (f'{{ca: ["{tls_keys / "clients" / "demo-ca.pem"}"], system_ca: false, '
                      f'certificate: "{tls_keys / "gateway-client-rsa.pem"}", key: "{tls_keys / "gateway-client-rsa.key"}"}}')
    gw = start(tmp_path_factory.mktemp("gateway"), tls_keys, clinic.url, gateway_client)
    yield gw
    gw.stop()


def post(gw: GatewayProcesses, ctx: ssl.SSLContext, token: str = LAB_TOKEN) -> httpx.Response:
    with httpx.Client(base_url=gw.base, verify=ctx, timeout=10) as http:
        return http.post("/api/v1/messages", json=envelope_json("lab", "clinic"),
                         headers={"Authorization": f"Bearer {token}"})


def audited(gw: GatewayProcesses, after: int) -> list[dict]:
    """The refusals the gateway audited after the row ``after`` (an ``audit_mark``), newest first."""
    journal = Journal(gw.db_url)
    try:
        return [a for a in journal.rejections(200) if a["id"] > after]
    finally:
        journal.engine.dispose()


def audit_mark(gw: GatewayProcesses) -> int:
    """The newest audited refusal so far. The module's tests share the gateway and run one after another, and a
    refusal is audited before it is answered, so the rows after a test's mark are that test's own."""
    return max((a["id"] for a in audited(gw, 0)), default=0)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# ---- REST ---------------------------------------------------------------------------

def test_rest_with_the_right_certificate_is_accepted_and_delivered_over_mtls(gw, tls_keys, clinic):
    r = post(gw, client(tls_keys, "lab"))
    assert r.status_code == 202, r.text
    message_id = r.json()["messageId"]
    gw.wait_status(message_id, LAB_TOKEN, "DELIVERED")
    # delivered in one request, and the clinic saw the gateway's client certificate on it: on every delivery
    # to the shared clinic, as all of them come from this gateway
    assert [x.message_id for x in clinic.requests].count(message_id) == 1
    assert set(clinic.client_subjects) == {GATEWAY_CLIENT}


@pytest.mark.parametrize(("presented", "code"), [
    (None, "CLIENT_CERTIFICATE_REQUIRED"),
    ("clinic", "CLIENT_CERTIFICATE_MISMATCH"),
    ("lab-expired", "CLIENT_CERTIFICATE_EXPIRED"),
    ("lab-revoked", "CLIENT_CERTIFICATE_REVOKED"),
    ("lab-rogue", "CLIENT_CERTIFICATE_UNTRUSTED"),
])
def test_rest_refuses_a_wrong_certificate_with_its_code_and_audits_it(gw, tls_keys, presented, code):
    mark = audit_mark(gw)
    r = post(gw, client(tls_keys, presented))
    assert r.status_code == 403, r.text
    assert (r.json()["code"], r.json()["field"]) == (code, "TLS client certificate")
    assert [(a["source"], a["remote"]) for a in audited(gw, mark) if a["code"] == code] == [("rest", "127.0.0.1")]


def test_plain_http_and_tls_without_the_ca_do_not_reach_the_api(gw, tls_keys):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{gw.port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{gw.base}/healthz", timeout=5)  # the system CAs: the demo CA is not among them


def test_gost_tls_on_the_same_port(gw, tls_keys):
    ctx = client(tls_keys, "lab", gost=True)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.2" and tls.cipher()[0] == "GOST2012-KUZNYECHIK-KUZNYECHIKOMAC"
        assert "gateway-api" in str(tls.getpeercert()["subject"])
    r = post(gw, ctx)
    assert r.status_code == 202, r.text


def test_token_rotation_old_expired_refused_with_its_code(gw, tls_keys):
    mark = audit_mark(gw)
    r = post(gw, client(tls_keys, "lab"), token="lab-old-token")
    assert r.status_code == 401 and r.json()["code"] == "TOKEN_EXPIRED", r.text
    assert "old" in r.json()["detail"]
    assert post(gw, client(tls_keys, "lab"), token="no-such-token").json()["code"] == "INVALID_TOKEN"
    row = next(a for a in audited(gw, mark) if a["code"] == "TOKEN_EXPIRED")
    assert row["sender"] == "lab"


# ---- SOAP ---------------------------------------------------------------------------

def soap_call(gw: GatewayProcesses, ctx: ssl.SSLContext, token: str) -> etree._Element:
    request = smev.send_request(notice())
    with httpx.Client(verify=ctx, timeout=10) as http:
        resp = http.post(f"{gw.base}/smev/1.1", content=smev.soap(request),
                         headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "urn:SendRequest",
                                  "Authorization": f"Bearer {token}"})
    return etree.fromstring(resp.content).find(f"{{{SOAP_ENV_NS}}}Body")[0]


def test_soap_with_the_right_certificate_is_accepted_and_refused_otherwise(gw, tls_keys):
    mark = audit_mark(gw)
    answer = soap_call(gw, client(tls_keys, "lab"), LAB_TOKEN)
    assert etree.QName(answer).localname == "SendRequestResponse", etree.tostring(answer)
    for presented, code in [(None, "CLIENT_CERTIFICATE_REQUIRED"), ("clinic", "CLIENT_CERTIFICATE_MISMATCH"),
                            ("lab-expired", "CLIENT_CERTIFICATE_EXPIRED"),
                            ("lab-revoked", "CLIENT_CERTIFICATE_REVOKED"),
                            ("lab-rogue", "CLIENT_CERTIFICATE_UNTRUSTED")]:
        fault = soap_call(gw, client(tls_keys, presented), LAB_TOKEN)
        assert fault.tag == f"{{{SOAP_ENV_NS}}}Fault", etree.tostring(fault)
        assert f"[{code}]" in fault.findtext("faultstring"), (presented, fault.findtext("faultstring"))
    codes = {a["code"] for a in audited(gw, mark) if a["source"] == "soap"}
    assert codes >= {"CLIENT_CERTIFICATE_REQUIRED", "CLIENT_CERTIFICATE_MISMATCH", "CLIENT_CERTIFICATE_EXPIRED",
                     "CLIENT_CERTIFICATE_REVOKED", "CLIENT_CERTIFICATE_UNTRUSTED"}


# ---- MLLP ---------------------------------------------------------------------------

def oru(control: str) -> bytes:
    return ("MSH|^~\\&|APP|TLSLAB|GW|GW|20261123101500||ORU^R01|" + control + "|P|2.5.1\r"
            "PID|||P-1^^^^MR||Иванов^Иван||19800101|M\r"
            "OBR|1|P1|F1|CBC\r"
            "OBX|1|NM|HGB^Гемоглобин||135|g/L|120-160|N|||F\r").encode()


def mllp(gw: GatewayProcesses, ctx: ssl.SSLContext, message: bytes) -> hl7.Message | None:
    """One message over MLLP/TLS; its ACK, or None when the gateway closed the connection instead."""
    reader = FrameReader()
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=15) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        try:
            tls.sendall(frame(message))
            while True:
                got = tls.recv(4096)
                if not got:
                    return None
                acks = reader.feed(got)
                if acks:
                    return hl7.parse(acks[0].decode())
        except (ConnectionError, ssl.SSLError):
            return None


def test_mllp_session_with_the_labs_certificate_and_refusals(gw, tls_keys, clinic):
    mark = audit_mark(gw)
    ack = mllp(gw, client(tls_keys, "lab"), oru("T-1"))
    assert ack is not None and str(ack.segment("MSA")[1]) == "AA", str(ack)
    wait_for(lambda: message_id_for("lab", "T-1") in clinic.accepted)  # the clinic keys deliveries by message id
    for presented, code in [(None, "CLIENT_CERTIFICATE_REQUIRED"), ("clinic", "CLIENT_CERTIFICATE_MISMATCH")]:
        ack = mllp(gw, client(tls_keys, presented), oru(f"T-{presented}"))
        assert ack is not None and str(ack.segment("MSA")[1]) == "AR", str(ack)
        assert code in str(ack.segment("ERR")[8])
    for presented in ("lab-expired", "lab-revoked", "lab-rogue"):
        assert mllp(gw, client(tls_keys, presented), oru(f"T-{presented}")) is None  # closed, no ACK
    codes = {a["code"] for a in audited(gw, mark) if a["source"] == "hl7"}
    assert codes >= {"CLIENT_CERTIFICATE_REQUIRED", "CLIENT_CERTIFICATE_MISMATCH", "CLIENT_CERTIFICATE_EXPIRED",
                     "CLIENT_CERTIFICATE_REVOKED", "CLIENT_CERTIFICATE_UNTRUSTED"}


# ---- outbound -----------------------------------------------------------------------

def test_a_recipient_whose_certificate_names_another_host_is_refused(tmp_path, tls_keys):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_keys / "elsewhere-rsa.pem", tls_keys / "elsewhere-rsa.key")
    elsewhere = RecipientServer(name="elsewhere", tls=ctx).start()
    try:
        tls = f'{{ca: ["{tls_keys / "clients" / "demo-ca.pem"}"], system_ca: false}}'
        gw = start(tmp_path, tls_keys, elsewhere.url, tls)
        try:
            r = post(gw, client(tls_keys, "lab"))
            assert r.status_code == 202, r.text
            status = gw.wait_status(r.json()["messageId"], LAB_TOKEN, "DEAD")
            assert "Hostname mismatch" in status["lastError"], status["lastError"]
            assert elsewhere.requests == []  # not a byte of the message reached it
        finally:
            gw.stop()
    finally:
        elsewhere.stop()


def test_pinning_refuses_a_recipient_with_another_certificate(tmp_path, tls_keys):
    pin = "0" * 64
    tls = (f'{{ca: ["{tls_keys / "clients" / "demo-ca.pem"}"], system_ca: false, pin_sha256: ["{pin}"], '
           f'certificate: "{tls_keys / "gateway-client-rsa.pem"}", key: "{tls_keys / "gateway-client-rsa.key"}"}}')
    clinic = clinic_inbox(tls_keys)  # its own: the shared one records the other tests' deliveries
    try:
        gw = start(tmp_path, tls_keys, clinic.url, tls)
        try:
            r = post(gw, client(tls_keys, "lab"))
            status = gw.wait_status(r.json()["messageId"], LAB_TOKEN, "DEAD")
            assert "is not pinned" in status["lastError"], status["lastError"]
            assert clinic.requests == []
        finally:
            gw.stop()
    finally:
        clinic.stop()


"""SOAP delivery over TLS: the gateway's zeep pusher with a channel's tls against a real spyne partner on 127.0.0.1.

The partner requires a client certificate from the demo CA. zeep's requests session gets the
channel's SSL context and nothing else (not certifi's CAs, not requests' own certificate
settings): the WSDL load and the call both go over it. The recipient's name is checked, and
pins are checked before a byte of the WSDL request or the call is sent.
"""
from __future__ import annotations

import hashlib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.soap.push import SoapPusher
from demo.ca import DemoCA
from demo.emulators.soap_partner import SoapPartner
from gateway.config import Channel
from gateway.envelope import Envelope
from gateway.tls import ClientContexts, ClientTls
from gateway.xmlsafe import parse_xml
from tests.support.configs import NOTICE_NS
from tests.support.gateway_proc import notice


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("soap-tls")
    ca = DemoCA.create(out / "ca", key_type="rsa", subject="/O=Zdravlink demo/CN=SOAP TLS CA")
    ca.issue(out, "partner-server", "rsa", tls="server")
    ca.issue(out, "elsewhere", "rsa", tls="server", hosts=("partner.example",))
    ca.issue(out, "gateway-client", "rsa", tls="client")
    (out / "ca.pem").write_bytes(ca.cert.read_bytes())
    return out


def server(keys: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(keys / f"{name}-rsa.pem", keys / f"{name}-rsa.key")
    ctx.load_verify_locations(keys / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # an mTLS partner
    return ctx


@pytest.fixture
def partner(keys: Path) -> Iterator[SoapPartner]:
    with SoapPartner(name="partner", tls=server(keys, "partner-server")) as p:
        yield p


@pytest.fixture
def pusher(keys: Path) -> Iterator[SoapPusher]:
    p = SoapPusher(timeout=5.0, tls=ClientContexts(keys))
    yield p
    p.close()


def tls(keys: Path, *, client_certificate: bool = True, pins: list[str] | None = None) -> ClientTls:
    cert = ({"certificate": str(keys / "gateway-client-rsa.pem"), "key": str(keys / "gateway-client-rsa.key")}
            if client_certificate else {})
    return ClientTls(ca=[str(keys / "ca.pem")], system_ca=False, pin_sha256=pins or [], **cert)


def push(pusher: SoapPusher, partner: SoapPartner, settings: ClientTls):
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NOTICE_NS,
                   payload=parse_xml(notice().encode()))
    channel = Channel(mode="soap", wsdl=partner.wsdl_url, url=partner.url, tls=settings)
    return pusher.push(channel, env.to_xml(), env.message_id, 1), env


def fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def test_soap_delivery_over_mtls_with_the_channels_ca_and_client_certificate(keys, partner, pusher):
    res, env = push(pusher, partner, tls(keys))
    assert (res.delivered, res.status_code) == (True, 200), res
    assert [r.message_id for r in partner.received] == [env.message_id]
    assert partner.wsdl_fetches == 1  # the WSDL came over the same TLS session settings


def test_without_the_client_certificate_the_partner_refuses_and_nothing_arrives(keys, partner, pusher):
    res, _ = push(pusher, partner, tls(keys, client_certificate=False))
    assert not res.delivered and res.retryable, res
    assert partner.received == [] and partner.calls == []


def test_the_system_cas_alone_do_not_trust_the_demo_ca(keys, partner, pusher):
    res, _ = push(pusher, partner, ClientTls(certificate=str(keys / "gateway-client-rsa.pem"),
                                             key=str(keys / "gateway-client-rsa.key")))
    assert not res.delivered and "CERTIFICATE_VERIFY_FAILED" in res.detail, res
    assert partner.calls == []


def test_a_partner_whose_certificate_names_another_host_is_refused(keys, pusher):
    with SoapPartner(name="elsewhere", tls=server(keys, "elsewhere")) as elsewhere:
        res, _ = push(pusher, elsewhere, tls(keys))
        assert not res.delivered and "Hostname mismatch" in res.detail, res
        assert elsewhere.calls == [] and elsewhere.wsdl_fetches == 0


def test_pins_are_checked_before_the_wsdl_or_the_call_is_sent(keys, partner, pusher):
    res, _ = push(pusher, partner, tls(keys, pins=["0" * 64]))
    assert not res.delivered and "is not pinned" in res.detail, res
    assert partner.calls == [] and partner.wsdl_fetches == 0
    good = fingerprint(keys / "partner-server-rsa.pem")
    res, env = push(pusher, partner, tls(keys, pins=["0" * 64, good]))  # the next certificate's pin beside it
    assert res.delivered, res
    assert [r.message_id for r in partner.received] == [env.message_id]

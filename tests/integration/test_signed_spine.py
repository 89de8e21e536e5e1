"""Signatures through the whole spine: verified at intake, signed by the gateway on delivery.

Real processes, real RabbitMQ, a real recipient on 127.0.0.1 that checks the gateway's
signature with the public API of ``signing``.

The tests that only send messages share one gateway and one clinic for the module (a gateway's
start costs seconds of CPU): each looks only at the deliveries of its own message ids, so they pass
in any order and alone. The test that needs another configuration starts a gateway of its own.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from demo.emulators.rest_recipient import Received, RecipientServer
from gateway.envelope import DSIG_NS, Envelope
from gateway.schemas import ENVELOPE_NS
from gateway.xmlsafe import parse_xml
from signing import Certificate, PrivateKey, Signer, TrustStore, sign, verify
from tests.conftest import module_gateway
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import NOTICE_NS, GatewayProcesses, notice

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("test_signed_spine")]
Z, DS = "{%s}" % ENVELOPE_NS, "{%s}" % DSIG_NS


def signer(keys: Path, name: str, key_type: str) -> Signer:
    return Signer.create(PrivateKey.load(keys / f"{name}-{key_type}.key"),
                         Certificate.load(keys / f"{name}-{key_type}.pem"))


def signed_envelope(keys: Path, by: Signer | None, text: str = "Образец получен & <принят>") -> Envelope:
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NOTICE_NS,
                   payload=parse_xml(notice(text="placeholder").encode()))
    env.payload.find(f"{{{NOTICE_NS}}}Text").text = text
    if by is not None:
        env.sender_signature = sign(env.sender_data_element(), by)
    return env


def recipient(keys: Path, gateway_key: str) -> RecipientServer:
    """A clinic that checks, on every delivery, the gateway's signature made with its ``gateway_key`` demo key."""
    return RecipientServer(name="clinic", trust=TrustStore.from_directory(keys / "trust"),
                           gateway=Certificate.load(keys / f"gateway-{gateway_key}.pem")).start()


def deliveries(clinic: RecipientServer, message_id: str) -> list[Received]:
    """What the clinic received of this message, in order: the module's tests share the clinic."""
    return [r for r in list(clinic.requests) if r.message_id == message_id]


@pytest.fixture(scope="module")
def clinic(demo_keys: Path) -> Iterator[RecipientServer]:
    server = recipient(demo_keys, "gost2012-256")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, amqp_url: str, clinic: RecipientServer,
       demo_keys: Path) -> Iterator[GatewayProcesses]:
    """The module's gateway: the lab must sign, the gateway signs deliveries with its GOST 2012-256 key.

    Built here rather than by ``gateway_factory``, which is function-scoped and would start one per test.
    """
    yield from module_gateway(tmp_path_factory.mktemp("signed-spine") / "gw",
                              configs.participants(clinic.url, keys=demo_keys, lab_signs=True), configs.routes(),
                              settings=configs.settings(keys=demo_keys), amqp_url=amqp_url)


def test_signed_message_is_delivered_with_the_gateways_signature(gw, clinic, demo_keys):
    env = signed_envelope(demo_keys, signer(demo_keys, "lab", "gost2012-256"))
    r = gw.post(env.to_xml(), LAB_TOKEN)
    assert r.status_code == 202, r.text
    gw.wait_status(env.message_id, LAB_TOKEN, "DELIVERED")

    got = deliveries(clinic, env.message_id)[0]
    assert got.signature == "OK gost2012-256"  # checked by the recipient on arrival
    doc = etree.fromstring(got.body)
    data = doc.find(Z + "SenderProvidedData")
    trust = TrustStore.from_directory(demo_keys / "trust")
    # The gateway's signature names the gateway; the sender's is carried through and still verifies.
    by_gateway = verify(doc.find(f"{Z}GatewaySignature/{DS}Signature"), document=doc, trust=trust, expected=data,
                        signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])
    by_lab = verify(doc.find(f"{Z}SenderSignature/{DS}Signature"), document=doc, trust=trust, expected=data,
                    signers=[Certificate.load(demo_keys / "lab-gost2012-256.pem")])
    assert "CN=gateway" in by_gateway.certificate.subject and "CN=lab" in by_lab.certificate.subject
    assert "Образец получен &amp; &lt;принят&gt;" in got.body.decode("utf-8")


def test_json_form_signed_with_rsa_is_accepted(gw, clinic, demo_keys):
    """The JSON form is verified on the rebuilt envelope, which the SMEV transform makes layout-proof."""
    env = signed_envelope(demo_keys, signer(demo_keys, "lab", "rsa"))
    r = gw.post(env.to_json(), LAB_TOKEN)
    assert r.status_code == 202, r.text
    gw.wait_status(env.message_id, LAB_TOKEN, "DELIVERED")
    assert deliveries(clinic, env.message_id)[0].signature == "OK gost2012-256"


def test_tampered_message_is_refused_and_journalled_rejected(gw, clinic, demo_keys):
    env = signed_envelope(demo_keys, signer(demo_keys, "lab", "gost2012-256"))
    wire = env.to_xml().replace("Образец получен".encode(), "Образец утерян".encode())
    r = gw.post(wire, LAB_TOKEN)
    assert r.status_code == 422
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == "SIGNATURE_DIGEST_MISMATCH" and problem["field"] == "SenderSignature"
    st = gw.status(env.message_id, LAB_TOKEN)
    assert st["status"] == "REJECTED"
    assert st["trail"][-1]["detail"]["code"] == "SIGNATURE_DIGEST_MISMATCH"
    assert deliveries(clinic, env.message_id) == []


@pytest.mark.parametrize("case, status, code", [
    ("unsigned", 403, "SIGNATURE_REQUIRED"),
    ("someone else's key", 403, "CERTIFICATE_SENDER_MISMATCH"),
])
def test_refusals_name_their_code(gw, demo_keys, case, status, code):
    by = None if case == "unsigned" else signer(demo_keys, "clinic", "gost2012-256")
    r = gw.post(signed_envelope(demo_keys, by).to_xml(), LAB_TOKEN)
    assert (r.status_code, r.json()["code"]) == (status, code)


def test_certificate_expiry_is_a_metric(gw):
    text = gw.metrics()
    lines = [ln for ln in text.splitlines() if ln.startswith("zl_certificate_expiry_days{")]
    owners = {ln.split('owner="')[1].split('"')[0] for ln in lines}
    assert owners == {"gateway", "lab", "clinic", "trust-store"}
    gateway_days = next(float(ln.rsplit(" ", 1)[1]) for ln in lines if 'owner="gateway"' in ln)
    assert 700 < gateway_days <= 730


@pytest.fixture
def clinic_512(demo_keys: Path) -> Iterator[RecipientServer]:
    """A clinic of its own for the gateway that signs with its GOST 2012-512 key."""
    server = recipient(demo_keys, "gost2012-512")
    yield server
    server.stop()


def test_json_recipient_gets_a_gateway_signature_it_can_verify(gateway_factory, clinic_512, demo_keys):
    """A JSON recipient rebuilds the envelope from JSON; the SMEV transform keeps the signature valid.

    Its own gateway: the clinic takes JSON and the gateway signs with another key, another configuration.
    """
    gw = gateway_factory(configs.participants(clinic_512.url, clinic_format="json", keys=demo_keys),
                         configs.routes(), settings=configs.settings(keys=demo_keys, gateway_key="gost2012-512"))
    env = signed_envelope(demo_keys, None)
    assert gw.post(env.to_json(), LAB_TOKEN).status_code == 202
    gw.wait_status(env.message_id, LAB_TOKEN, "DELIVERED")
    got = clinic_512.requests[0]
    assert got.content_type.startswith("application/json")
    assert got.signature == "OK gost2012-512"

"""The signature doctor names the cause of a refused signature, broken in each of four ways.

Each broken envelope is what integrators really send: the payload edited after signing,
the SMEV transform declared but not applied, the SignatureValue made with another key
than the certificate in KeyInfo, a certificate from a CA the gateway does not trust.
``zdravlink verify --explain`` must name each cause; ``--dump`` shows the octets; the
same explanation, masked, is in the audit record of the refusal.
"""
from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from lxml import etree

from demo.ca import DemoCA, demo_signer
from gateway.envelope import Envelope
from gateway.xmlsafe import parse_xml
from signing import Signer, TrustStore, sign
from signing.explain import CAUSE_CONTENT, CAUSE_KEY, CAUSE_NONE, CAUSE_TRANSFORM, CAUSE_TRUST, explain
from signing.xmldsig import DS_NS, SMEV_TRANSFORM, _exc_c14n
from tests.support import configs
from tests.support.cli import zdravlink
from tests.support.gateway_proc import NOTICE_NS, REPO, notice

DS = "{%s}" % DS_NS


def envelope(signer: Signer | None = None, *, smev: bool = True) -> Envelope:
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NOTICE_NS,
                   payload=parse_xml(notice(snils="12345678901").encode()))
    if signer is not None:
        env.sender_signature = sign(env.sender_data_element(), signer, smev=smev)
    return env


def resign_signed_info(sig: etree._Element, signer: Signer) -> None:
    """Make SignedInfo's SignatureValue right again after SignedInfo was edited (the integrator's own tool did)."""
    value = signer.algorithm.backend.sign(signer.key, _exc_c14n(sig.find(DS + "SignedInfo")))
    sig.find(DS + "SignatureValue").text = base64.b64encode(value).decode()


def broken(kind: str, keys: Path, tmp: Path) -> bytes:
    lab = demo_signer(keys, "lab")
    if kind == "payload":
        root = parse_xml(envelope(lab).to_xml())
        root.find(f".//{{{NOTICE_NS}}}Code").text = "SAMPLE_LOST"
    elif kind == "transform":
        # digested after exc-c14n only, but the Reference says exc-c14n then the SMEV transform
        env = envelope(lab, smev=False)
        transforms = env.sender_signature.find(f"{DS}SignedInfo/{DS}Reference/{DS}Transforms")
        etree.SubElement(transforms, DS + "Transform", Algorithm=SMEV_TRANSFORM)
        resign_signed_info(env.sender_signature, lab)
        root = parse_xml(env.to_xml())
    elif kind == "key":
        # signed with the clinic's key, the lab's certificate in KeyInfo
        clinic = demo_signer(keys, "clinic")
        env = envelope(Signer(clinic.key, lab.certificate, clinic.algorithm))
        root = parse_xml(env.to_xml())
    elif kind == "chain":
        rogue = DemoCA.create(tmp / "rogue-ca", subject="/O=Elsewhere/CN=Rogue CA")
        rogue.issue(tmp, "lab", "gost2012-256")
        root = parse_xml(envelope(demo_signer(tmp, "lab")).to_xml())
    else:
        root = parse_xml(envelope(lab).to_xml())
    return etree.tostring(root)


def config(tmp: Path, keys: Path) -> Path:
    d = tmp / "config"
    d.mkdir()
    (d / "gateway.yaml").write_text(configs.settings(keys=keys))
    (d / "participants.yaml").write_text(configs.participants("http://127.0.0.1:9/x", keys=keys))
    (d / "routes.yaml").write_text(configs.routes())
    return d


KINDS = [("payload", CAUSE_CONTENT, "SIGNATURE_DIGEST_MISMATCH"),
         ("transform", CAUSE_TRANSFORM, "SIGNATURE_DIGEST_MISMATCH"),
         ("key", CAUSE_KEY, "SIGNATURE_INVALID"),
         ("chain", CAUSE_TRUST, "CERTIFICATE_UNTRUSTED")]


@pytest.mark.parametrize(("kind", "cause", "code"), KINDS)
def test_verify_explain_names_the_cause(tmp_path, demo_keys, kind, cause, code):
    file = tmp_path / f"{kind}.xml"
    file.write_bytes(broken(kind, demo_keys, tmp_path))
    run = zdravlink("verify", str(file), "--explain", "--config", str(config(tmp_path, demo_keys)), cwd=REPO)
    assert run.exit_code == 1, run.stdout + run.stderr
    text = run.stdout
    assert f"refused: {code}" in text and f"cause: {cause}" in text, text
    assert "Reference #SIGNED_BY_CONSUMER -> SenderProvidedData (Id SIGNED_BY_CONSUMER)" in text
    if kind == "transform":
        assert "computed over exc-c14n alone, but the Reference declares exc-c14n -> smev-transform" in text
        assert "changed since it was signed" not in text  # the verifier's words, which the cause corrects
    if kind == "key":
        assert "it verifies with the key of 'CN=clinic,O=Zdravlink demo'" in text, text
    if kind == "chain":
        assert "issuer 'CN=Rogue CA,O=Elsewhere' is not in the trust store" in text, text


def test_a_good_signature_is_explained_too_and_dump_shows_the_octets(tmp_path, demo_keys):
    file = tmp_path / "good.xml"
    file.write_bytes(broken("none", demo_keys, tmp_path))
    run = zdravlink("verify", str(file), "--explain", "--dump", "--config", str(config(tmp_path, demo_keys)),
                    cwd=REPO)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"cause: {CAUSE_NONE}" in run.stdout and "digest matches" in run.stdout
    assert "octets digested, after exc-c14n -> smev-transform" in run.stdout
    assert "<ns1:SenderProvidedData" in run.stdout  # the SMEV transform's prefixes
    assert "CRL of 'CN=Zdravlink Demo CA,O=Zdravlink demo'" in run.stdout and "not listed" in run.stdout


def test_the_explanation_for_the_audit_is_masked(demo_keys, tmp_path):
    root = parse_xml(broken("payload", demo_keys, tmp_path))
    sig = root.find(f".//{DS}Signature")
    report = explain(sig, document=root, trust=TrustStore.from_directory(demo_keys / "trust"))
    audit = report.text(for_audit=True)
    assert "octets" not in audit and "SAMPLE" not in audit and "12345678901" not in audit
    assert CAUSE_CONTENT in audit
    from gateway.masking import mask_text

    masked = mask_text(audit)
    assert "CN=lab" not in masked  # quoted names are masked for the audit table
    assert report.references[0].computed.hex() in masked  # digests (hex) stay, to compare


def test_a_refused_signature_is_audited_with_the_explanation_masked(tmp_path, demo_keys):
    from adapters.intake import Intake
    from gateway.accept import AcceptPipeline
    from gateway.config import load_config
    from gateway.errors import Rejection
    from gateway.journal import Journal
    from gateway.keyring import load_keyring

    cfg = load_config(config(tmp_path, demo_keys))
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    journal.migrate()
    intake = Intake(AcceptPipeline(cfg, journal, load_keyring(cfg)), journal)
    with pytest.raises(Rejection) as refused:
        intake.receive(broken("transform", demo_keys, tmp_path), "application/xml", configs.LAB_TOKEN, source="rest")
    assert refused.value.code == "SIGNATURE_DIGEST_MISMATCH"
    assert "explanation" not in refused.value.detail  # the partner's answer stays short
    detail = journal.rejections(1)[0]["detail"]
    assert f"cause: {CAUSE_TRANSFORM}" in detail and "declared digest matches: exc-c14n alone" in detail, detail
    assert "CN=lab" not in detail and "12345678901" not in detail and "<" not in detail, detail
    journal.engine.dispose()

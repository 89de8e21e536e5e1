"""A ФЛК protocol an insurer left as a file, taken in as if the insurer had sent it.

Insurers that collect registers from a directory answer the same way: a protocol file
(``V…``/``F…`` XML, or a ZIP of them). Taking it in by hand must not be a side door: the
file becomes the same ``oms-protocol`` message from the insurer to the clinic's MIS,
referring to the act, and goes through the same checks as one posted to the API. Its
detached signature (``.sig``, CMS) stands for the envelope signature the route may
require, verified against the insurer's certificates, and is kept as the evidence.
"""
from __future__ import annotations

import base64
import uuid
from pathlib import Path

from lxml import etree
from sqlalchemy import func, select

from adapters.acts.runner import ActRunner
from gateway import errors
from gateway.accept import Accepted
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.tables import acts
from gateway.oms import OmsFileError
from gateway.oms.flk import read_protocol_file
from gateway.service_records import FLK_PROTOCOL_NS
from signing.cms import verify_detached
from signing.errors import SignatureError

_F = "{%s}" % FLK_PROTOCOL_NS


def import_protocol(runner: ActRunner, path: Path, signature: Path | None) -> Accepted:
    """Accept the protocol at ``path`` for the act it names (FNAME_I); Rejection (audited) if it does not fit."""
    content = path.read_bytes()
    try:
        answered = {p.answers.upper() for p in read_protocol_file(path.name, content)}
    except OmsFileError as exc:
        raise Rejection(errors.PROTOCOL_INVALID, str(exc), "ProtocolFile", status=422) from None
    h_names = {"H" + n[1:] if n.startswith("L") else n for n in answered}
    with runner.journal.engine.connect() as conn:
        found = conn.execute(select(acts).where(func.upper(acts.c.file_name).in_(h_names))).all()
    if len(found) != 1:
        raise Rejection(errors.MESSAGE_NOT_FOUND, f"{path.name} answers {', '.join(sorted(answered))}: "
                        f"{'no act' if not found else 'more than one act'} went out under that name",
                        "ProtocolFile", status=422)
    act = found[0]
    record = runner.journal.get(act.message_id)
    if record is None:
        raise Rejection(errors.MESSAGE_NOT_FOUND, f"act {act.message_id} is not in the journal", "ProtocolFile",
                        status=422)
    insurer = runner.config.participants[act.insurer]
    payload = etree.Element(_F + "ProtocolFile", nsmap={"fp": FLK_PROTOCOL_NS})
    etree.SubElement(payload, _F + "FileName").text = path.name
    etree.SubElement(payload, _F + "Content").text = base64.b64encode(content).decode("ascii")
    env = Envelope(message_id=str(uuid.uuid1()), sender=insurer.mnemonic, recipient=record.sender,
                   message_type=FLK_PROTOCOL_NS, payload=payload, reference_message_id=act.message_id)
    evidence = None
    if signature is not None:
        keyring = runner.intake.pipeline.keyring
        if keyring.trust is None:
            raise Rejection(errors.CERTIFICATE_UNTRUSTED, "the gateway has no trust store configured",
                            "Signature", status=403)
        try:
            verified = verify_detached(content, signature.read_bytes(), trust=keyring.trust,
                                       signers=keyring.certificates.get(insurer.mnemonic, []))
        except SignatureError as exc:
            rejection = Rejection(exc.code, exc.detail, "Signature", status=422)
            runner.intake.refused(rejection, source="acts", remote=None, caller=insurer.mnemonic, env=env)
            raise rejection from None
        evidence = {"method": "cms-detached", "file": signature.name, "subject": verified.certificate.subject,
                    "serial": verified.certificate.serial, "fingerprint": verified.certificate.fingerprint,
                    "algorithm": verified.algorithm.name}
    return runner.intake.receive_envelope(env, insurer, source="acts", verified_signature=evidence)

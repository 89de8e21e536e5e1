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
    """Accept the protocol at ``path`` for the act it names (FNAME_I); a Rejection is audited first."""
    content = path.read_bytes()
    try:
        env, insurer = _envelope(runner, path.name, content)
    except Rejection as rejection:
        runner.intake.refused(rejection, source="acts", remote=path.name[:64], caller=None, env=None)
        raise
    evidence = None
    if signature is not None:
        try:
            evidence = _verified(runner, content, signature, insurer)
        except Rejection as rejection:
            runner.intake.refused(rejection, source="acts", remote=path.name[:64], caller=insurer, env=env)
            raise
    return runner.intake.receive_envelope(env, runner.config.participants[insurer], source="acts",
                                          remote=path.name[:64], verified_signature=evidence)


def _envelope(runner: ActRunner, name: str, content: bytes) -> tuple[Envelope, str]:
    """The oms-protocol message the file makes: from the act's insurer to its MIS, referring to the act."""
    try:
        answered = {p.answers.upper() for p in read_protocol_file(name, content)}
    except OmsFileError as exc:
        raise Rejection(errors.PROTOCOL_INVALID, str(exc), "ProtocolFile", status=422) from None
    h_names = {"H" + n[1:] if n.startswith("L") else n for n in answered}
    with runner.journal.engine.connect() as conn:
        found = conn.execute(select(acts).where(func.upper(acts.c.file_name).in_(h_names))).all()
    if len(found) != 1:
        raise Rejection(errors.MESSAGE_NOT_FOUND, f"{name} answers {', '.join(sorted(answered))}: "
                        f"{'no act' if not found else 'more than one act'} went out under that name",
                        "ProtocolFile", status=422)
    act = found[0]
    record = runner.journal.get(act.message_id)
    if record is None:
        raise Rejection(errors.MESSAGE_NOT_FOUND, f"act {act.message_id} is not in the journal", "ProtocolFile",
                        status=422)
    payload = etree.Element(_F + "ProtocolFile", nsmap={"fp": FLK_PROTOCOL_NS})
    etree.SubElement(payload, _F + "FileName").text = name
    etree.SubElement(payload, _F + "Content").text = base64.b64encode(content).decode("ascii")
    return Envelope(message_id=str(uuid.uuid1()), sender=act.insurer, recipient=record.sender,
                    message_type=FLK_PROTOCOL_NS, payload=payload, reference_message_id=act.message_id), act.insurer


def _verified(runner: ActRunner, content: bytes, signature: Path, insurer: str) -> dict[str, str]:
    """The evidence of the insurer's detached signature over the file; Rejection with its code if it does not hold."""
    keyring = runner.intake.pipeline.keyring
    if keyring.trust is None:
        raise Rejection(errors.CERTIFICATE_UNTRUSTED, "the gateway has no trust store configured", "Signature",
                        status=403)
    try:
        verified = verify_detached(content, signature.read_bytes(), trust=keyring.trust,
                                   signers=keyring.certificates.get(insurer, []))
    except SignatureError as exc:
        raise Rejection(exc.code, exc.detail, "Signature", status=422) from None
    return {"method": "cms-detached", "file": signature.name, "subject": verified.certificate.subject,
            "serial": verified.certificate.serial, "fingerprint": verified.certificate.fingerprint,
            "algorithm": verified.algorithm.name}

"""The gateway's keys, trust store and participants' certificates, loaded from the configuration.

Loaded once at start-up, so a missing file, a wrong password or a key that does not
match its certificate stops the gateway with the file and the reason (the same list
``zdravlink check-config`` prints), instead of failing on the first signed message.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from gateway.config import CertificateFile, ConfigError, ConfigProblem, GatewayConfig
from gateway.envelope import DSIG_NS, Envelope
from gateway.schemas import ENVELOPE_NS
from gateway.transport import transport_problems
from gateway.xmlsafe import parse_xml
from signing import Certificate, KeyFileError, PrivateKey, Signer, TrustStore, Verified, errors, sign, verify
from signing.errors import SignatureError
from signing.libcrypto import CryptoError

_Z = "{%s}" % ENVELOPE_NS
_SENDER_SIGNATURE = f"{_Z}SenderSignature/{{{DSIG_NS}}}Signature"


@dataclass
class KeyRing:
    trust: TrustStore | None = None
    signer: Signer | None = None
    certificates: dict[str, list[Certificate]] = field(default_factory=dict)
    smev_transform: bool = True
    sign_deliveries: bool = True

    def owned_certificates(self) -> list[tuple[str, Certificate]]:
        """Every certificate the gateway relies on, with its owner, for the expiry metric."""
        out = [("gateway", self.signer.certificate)] if self.signer else []
        out += [(owner, c) for owner, certs in self.certificates.items() for c in certs]
        out += [("trust-store", c) for c in (self.trust.anchors if self.trust else [])]
        return out

    def verify_sender(self, env: Envelope, required: bool, at: dt.datetime | None = None) -> Verified | None:
        """Check the sender's signature over SenderProvidedData; None if unsigned and not required.

        The XML form is verified as it came over the wire; the JSON form as the envelope
        rebuilt from it, which the SMEV transform makes independent of prefixes and layout.
        """
        document = env.wire if env.wire is not None else env.to_element()
        signature = document.find(_SENDER_SIGNATURE)
        if signature is None:
            if required:
                raise SignatureError(errors.SIGNATURE_REQUIRED,
                                     f"messages from {env.sender!r} on this route must carry the sender's signature")
            return None
        if self.trust is None:
            raise SignatureError(errors.CERTIFICATE_UNTRUSTED, "the gateway has no trust store configured")
        return verify(signature, document=document, trust=self.trust, expected=document.find(_Z + "SenderProvidedData"),
                      signers=self.certificates.get(env.sender, []), at=at)

    def explain_sender(self, env: Envelope) -> str | None:
        """The signature doctor's text for a refused sender signature, for the audit record (no octets,
        certificate names quoted so that masking hides them); None if there is nothing to explain."""
        document = env.wire if env.wire is not None else env.to_element()
        signature = document.find(_SENDER_SIGNATURE)
        if signature is None:
            return None
        return explain_for_audit(signature, document, self, document.find(_Z + "SenderProvidedData"),
                                 self.certificates.get(env.sender, []))

    def sign_envelope(self, env_xml: bytes) -> bytes:
        """The envelope with the gateway's signature over its SenderProvidedData (replacing an older one)."""
        if self.signer is None or not self.sign_deliveries:
            return env_xml
        root = parse_xml(env_xml)
        data = root.find(_Z + "SenderProvidedData")
        if data is None:
            raise ValueError("not a zl:Envelope: zl:SenderProvidedData, which the envelope XSD requires, is missing")
        old = root.find(_Z + "GatewaySignature")
        if old is not None:
            root.remove(old)
        etree.SubElement(root, _Z + "GatewaySignature").append(sign(data, self.signer, smev=self.smev_transform))
        return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


def load_keyring(config: GatewayConfig) -> KeyRing:
    """Read every key and certificate the configuration names; raise ConfigError listing every problem."""
    base = config.directory
    s = config.settings.signing
    gw_file = str(base / "gateway.yaml")
    pfile = str(base / "participants.yaml")
    problems: list[ConfigProblem] = []
    ring = KeyRing(smev_transform=s.smev_transform, sign_deliveries=s.sign_deliveries)

    def path(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    def password(var: str | None, file: str, key: str) -> str | None:
        if var is None:
            return None
        if var not in os.environ:
            problems.append(ConfigProblem(file, key, f"environment variable {var} is not set"))
        return os.environ.get(var)

    if s.trust_store:
        try:
            ring.trust = TrustStore.from_directory(path(s.trust_store))
        except (KeyFileError, CryptoError) as exc:
            problems.append(ConfigProblem(gw_file, "signing.trust_store", str(exc)))
    if s.has_key:
        pw = password(s.password_env, gw_file, "signing.password_env")
        try:
            if s.pkcs12:
                key, cert = PrivateKey.load(path(s.pkcs12), pw), Certificate.load(path(s.pkcs12), pw)
            else:
                key_file, cert_file = s.key_files
                key, cert = PrivateKey.load(path(key_file), pw), Certificate.load(path(cert_file))
            ring.signer = Signer.create(key, cert, s.algorithm)
        except (KeyFileError, CryptoError, ValueError) as exc:
            problems.append(ConfigProblem(gw_file, "signing.pkcs12" if s.pkcs12 else "signing.key", str(exc)))

    for i, p in enumerate(config.participants.values()):
        certs: list[Certificate] = []
        for j, entry in enumerate(p.certificates):
            ref = entry if isinstance(entry, CertificateFile) else CertificateFile(file=entry)
            where = f"participants[{i}].certificates[{j}]"
            try:
                certs.append(Certificate.load(path(ref.file), password(ref.password_env, pfile, where)))
            except (KeyFileError, CryptoError) as exc:
                problems.append(ConfigProblem(pfile, where, str(exc)))
        ring.certificates[p.mnemonic] = certs
        if certs and ring.trust is None:
            problems.append(ConfigProblem(gw_file, "signing.trust_store",
                                          f"required: participant {p.mnemonic!r} lists certificates"))
        needs = p.signs_by_default or any(r.signature_required and r.sender == p.mnemonic for r in config.routes)
        if needs and not p.certificates:
            problems.append(ConfigProblem(pfile, f"participants[{i}].certificates",
                                          f"{p.mnemonic!r} must sign what it sends, so it needs a certificate"))
    problems += transport_problems(config)  # TLS, client certificate and token files, checked with the keys
    if problems:
        raise ConfigError(problems)
    return ring


def place_signature(target: etree._Element, signature: etree._Element) -> None:
    """Put a detached signature where its reader looks for it, never inside what it signs.

    In a zl:Envelope, the signature over SenderProvidedData is the sender's; elsewhere it
    goes right after the signed element.
    """
    parent = target.getparent()
    if parent is None:
        raise ValueError("the signed element is the document root; a detached signature needs it inside a parent")
    if parent.tag == _Z + "Envelope" and target.tag == _Z + "SenderProvidedData":
        old = parent.find(_Z + "SenderSignature")
        if old is not None:
            parent.remove(old)
        holder = etree.Element(_Z + "SenderSignature")
        holder.append(signature)
        target.addnext(holder)
        return
    target.addnext(signature)


def expected_signers(signature: etree._Element, ring: KeyRing | None
                     ) -> tuple[etree._Element | None, list[Certificate] | None]:
    """For a signature inside a zl:Envelope: the element it must cover and who may have made it."""
    holder = signature.getparent()
    envelope = holder.getparent() if holder is not None else None
    if holder is None or envelope is None or envelope.tag != _Z + "Envelope":
        return None, None
    data = envelope.find(_Z + "SenderProvidedData")
    if ring is None:
        return data, None
    if holder.tag == _Z + "GatewaySignature":
        return data, [ring.signer.certificate] if ring.signer else None
    sender = data.findtext(_Z + "Sender") if data is not None else None
    return data, ring.certificates.get(sender or "") or None


def explain_for_audit(signature: etree._Element, document: etree._Element, ring: KeyRing,
                      expected: etree._Element | None, signers: list[Certificate] | None) -> str | None:
    """``signing.explain`` of one signature as audit text; never raises (a refusal must still be recorded)."""
    from signing.explain import explain

    known = [c for certs in ring.certificates.values() for c in certs]
    known += [ring.signer.certificate] if ring.signer else []
    try:
        return explain(signature, document=document, trust=ring.trust, expected=expected, signers=signers,
                       known=known).text(for_audit=True)
    except Exception as exc:  # the explanation is a courtesy; the refusal stands without it
        return f"(no explanation: {type(exc).__name__})"

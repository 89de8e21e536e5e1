"""Who is calling: API tokens that rotate and expire, client certificates (mTLS), or both.

A participant's ``credentials`` in participants.yaml list its tokens (SHA-256 digests
only; ``zdravlink hash-token`` reads the token from stdin) each with an optional expiry,
and the client certificates its TLS connections must present. Both kinds configured
means both are required; one kind alone is enough by itself.

Rotation: add the new token's digest beside the old one, give the old one an
``expires``; both work until then, and afterwards the old one is refused with
TOKEN_EXPIRED (not INVALID_TOKEN), so the partner knows what to fix. Certificates
rotate the same way: list the next one beside the current one.

A client certificate is named by its file, its SHA-256 fingerprint, or its subject and
issuer (as ``zdravlink check-config`` prints them). A certificate the listener's CA
store does not vouch for (untrusted, expired, not yet valid, revoked) is refused
whatever else the caller sends, as a bad signature is (``gateway.tls``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import errors
from gateway.errors import Rejection
from gateway.tls import PeerCertificate, PeerRefused, check_client_certificate, resolve
from signing import Certificate, KeyFileError

if TYPE_CHECKING:
    from gateway.config import Participant

TOKEN_FIELD = "Authorization"
CERTIFICATE_FIELD = "TLS client certificate"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiToken(_Model):
    """One API token: its SHA-256 digest, and until when it works (unset: until removed)."""

    sha256: str
    expires: dt.datetime | None = None
    #: A name for the token in the audit and the logs ("2026-q3"), never the token itself.
    label: str | None = Field(None, max_length=50)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lower-case hex digits (printf %s TOKEN | zdravlink hash-token)")
        return value

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (2026-12-31T00:00:00Z or +03:00)")
        return value


class ClientCertificate(_Model):
    """A client certificate a participant's connections may present: by file, by fingerprint, or by names."""

    file: str | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    subject: str | None = None
    issuer: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ClientCertificate:
        ways = [self.file is not None, self.sha256 is not None, self.subject is not None]
        if sum(ways) != 1:
            raise ValueError("name the certificate one way: file, sha256, or subject with issuer")
        if (self.subject is None) != (self.issuer is None):
            raise ValueError("subject and issuer go together (a subject alone any trusted CA could issue)")
        return self


def normalise_name(name: str) -> str:
    """An RFC 2253 name compared without regard to spaces around separators or the case of attribute types."""
    parts = [p.strip() for p in re.split(r"(?<!\\),", name)]
    out = []
    for part in parts:
        key, _, value = part.partition("=")
        out.append(f"{key.strip().upper()}={value.strip()}")
    return ",".join(out)


class _Matcher:
    """A participant's configured client certificates, ready to match a presented one."""

    def __init__(self, fingerprints: set[str], names: set[tuple[str, str]]) -> None:
        self.fingerprints = fingerprints
        self.names = names

    def __bool__(self) -> bool:
        return bool(self.fingerprints or self.names)

    def matches(self, cert: Certificate) -> bool:
        return (cert.fingerprint in self.fingerprints
                or (normalise_name(cert.subject), normalise_name(cert.issuer)) in self.names)


def load_matchers(participants: Mapping[str, Participant], base: Path,
                  problem: Callable[[int, int, str], None] | None = None) -> dict[str, _Matcher]:
    """Each participant's client certificate matcher; a file that cannot be read is a problem (i, j, reason)."""
    out: dict[str, _Matcher] = {}
    for i, p in enumerate(participants.values()):
        prints: set[str] = set()
        names: set[tuple[str, str]] = set()
        for j, entry in enumerate(p.credentials.client_certificates):
            if entry.sha256:
                prints.add(entry.sha256)
            elif entry.subject and entry.issuer:
                names.add((normalise_name(entry.subject), normalise_name(entry.issuer)))
            elif entry.file:
                password = os.environ.get(entry.password_env) if entry.password_env else None
                try:
                    prints.add(Certificate.load(resolve(base, entry.file), password).fingerprint)
                except KeyFileError as exc:
                    if problem is None:
                        raise
                    problem(i, j, str(exc))
        out[p.mnemonic] = _Matcher(prints, names)
    return out


class Authenticator:
    """Token and client certificate → the participant calling, or a Rejection that says which rule it broke."""

    def __init__(self, participants: Mapping[str, Participant], base: Path,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.participants = participants
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._by_token: dict[str, tuple[Participant, ApiToken]] = {}
        for p in participants.values():
            for token in p.api_tokens:
                self._by_token[token.sha256] = (p, token)
        self.certificates = load_matchers(participants, base)

    def needs_certificate(self, mnemonic: str) -> bool:
        matcher = self.certificates.get(mnemonic)
        return bool(matcher)

    def authenticate(self, token: str | None, peer: PeerCertificate | None = None) -> Participant:
        """The caller; a Rejection (401 for tokens, 403 for certificates) otherwise."""
        cert = self.verified(peer)
        if token:
            found = self._by_token.get(hash_token(token))
            if found is None:
                raise Rejection(errors.INVALID_TOKEN, "the API token is not valid", TOKEN_FIELD, status=401)
            participant, entry = found
            if entry.expires is not None and self.clock() >= entry.expires:
                name = f" {entry.label!r}" if entry.label else ""
                raise Rejection(errors.TOKEN_EXPIRED, f"the API token{name} of {participant.mnemonic!r} expired on "
                                f"{entry.expires.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: use its successor",
                                TOKEN_FIELD, status=401, extra={"participant": participant.mnemonic})
            self.check_certificate(participant, cert)
            return participant
        owner = self.owner(cert) if cert is not None else None
        if owner is None:
            if cert is not None:
                raise Rejection(errors.CLIENT_CERTIFICATE_MISMATCH, f"the client certificate {cert.subject!r} "
                                "belongs to no participant", CERTIFICATE_FIELD, status=403)
            raise Rejection(errors.AUTHENTICATION_REQUIRED, "an API token is required (Authorization: Bearer …)",
                            TOKEN_FIELD, status=401)
        if owner.api_tokens:
            raise Rejection(errors.AUTHENTICATION_REQUIRED, f"{owner.mnemonic!r} authenticates with its client "
                            "certificate and an API token: the token is missing", TOKEN_FIELD, status=401,
                            extra={"participant": owner.mnemonic})
        return owner

    def verified(self, peer: PeerCertificate | None) -> Certificate | None:
        """The presented certificate if the listener's CA store vouches for it; a Rejection with the reason if not."""
        if peer is None:
            return None
        try:
            return check_client_certificate(peer, self.clock())
        except PeerRefused as exc:
            raise Rejection(exc.code, exc.detail, CERTIFICATE_FIELD, status=403,
                            extra={"fingerprint": peer.fingerprint}) from None

    def owner(self, cert: Certificate) -> Participant | None:
        return next((self.participants[m] for m, match in self.certificates.items() if match.matches(cert)), None)

    def check_certificate(self, participant: Participant, cert: Certificate | None) -> None:
        """A participant that lists client certificates must present one of them."""
        matcher = self.certificates.get(participant.mnemonic)
        if not matcher:
            return
        if cert is None:
            raise Rejection(errors.CLIENT_CERTIFICATE_REQUIRED, f"{participant.mnemonic!r} must connect with its "
                            "client certificate (TLS)", CERTIFICATE_FIELD, status=403,
                            extra={"participant": participant.mnemonic})
        if not matcher.matches(cert):
            raise Rejection(errors.CLIENT_CERTIFICATE_MISMATCH, f"the client certificate {cert.subject!r} is not one "
                            f"of {participant.mnemonic!r}'s", CERTIFICATE_FIELD, status=403,
                            extra={"participant": participant.mnemonic})

    def expiring_tokens(self, within: dt.timedelta) -> list[tuple[str, ApiToken]]:
        """Tokens that expire within ``within`` (or have expired), for check-config."""
        limit = self.clock() + within
        return [(p.mnemonic, t) for p, t in self._by_token.values() if t.expires is not None and t.expires <= limit]

"""The transport security configuration checked as a whole, and every certificate and CRL it relies on watched.

``transport_problems`` is what start-up and ``zdravlink check-config`` find wrong with
TLS files, client certificate files and ФРМР token files, each as a ConfigProblem with
its file and key (a listener that cannot load its key must not start at all).
``watched`` lists every date the gateway depends on, with whom it belongs to and what
kind it is: its own signing and TLS certificates, participants' signing and client
certificates, the trust store's CAs and the client CA stores', channels' CA files and
client certificates, and each CRL's next update (an expired CRL makes every signature
check of its CA's certificates fail closed). ``/metrics`` serves them as
``zl_certificate_expiry_seconds``; check-config warns at 30 days.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Channel, ConfigProblem, GatewayConfig
from gateway.credentials import load_matchers
from gateway.tls import (
    ClientTls,
    KeyPair,
    ServerTls,
    TlsConfigError,
    certificates_of,
    client_context,
    client_trust,
    load_certificates,
    resolve,
    server_context,
)
from signing import Certificate, TrustStore

#: check-config warns about anything that expires within this.
WARN_WITHIN = dt.timedelta(days=30)


@dataclass(frozen=True)
class Watched:
    """A date the gateway depends on: a certificate's notAfter or a CRL's nextUpdate."""

    owner: str
    #: signing | participant-signing | trust-store | tls-server | tls-client-ca | client-certificate |
    #: channel-client | channel-ca | crl
    kind: str
    subject: str
    serial: str
    expires: dt.datetime

    def seconds_left(self, at: dt.datetime | None = None) -> float:
        return (self.expires - (at or dt.datetime.now(dt.UTC))).total_seconds()


def channels(config: GatewayConfig) -> list[tuple[str, str, Channel]]:
    """Every channel once, with where it is configured (file, key): participants' own, then routes' others."""
    out: list[tuple[str, str, Channel]] = []
    seen: set[int] = set()
    pfile, rfile = str(config.directory / "participants.yaml"), str(config.directory / "routes.yaml")
    for i, p in enumerate(config.participants.values()):
        seen.add(id(p.delivery))
        out.append((pfile, f"participants[{i}].delivery", p.delivery))
    for i, route in enumerate(config.routes):
        for j, channel in enumerate(route.channels):
            if id(channel) not in seen:  # a route without channels of its own takes the recipient's
                seen.add(id(channel))
                out.append((rfile, f"routes[{i}].channels[{j}]", channel))
    return out


def transport_problems(config: GatewayConfig) -> list[ConfigProblem]:
    """Every TLS, client certificate and token file problem, with its file and key."""
    base = config.directory
    gw_file, pfile = str(base / "gateway.yaml"), str(base / "participants.yaml")
    problems: list[ConfigProblem] = []
    s = config.settings
    for key, tls in (("api.tls", s.api.tls), ("hl7.tls", s.hl7.tls if s.hl7.enabled else None)):
        if tls is not None:
            try:
                server_context(tls, base)
            except TlsConfigError as exc:
                problems.append(ConfigProblem(gw_file, key, str(exc)))
    load_matchers(config.participants, base, lambda i, j, why: problems.append(
        ConfigProblem(pfile, f"participants[{i}].credentials.client_certificates[{j}]", why)))
    for file, key, channel in channels(config):
        if channel.tls is not None:
            try:
                client_context(channel.tls, base)
            except TlsConfigError as exc:
                problems.append(ConfigProblem(file, f"{key}.tls", str(exc)))
        if channel.token_file and not resolve(base, channel.token_file).is_file():
            problems.append(ConfigProblem(file, f"{key}.token_file",
                                          f"{resolve(base, channel.token_file)}: no such file"))
    return problems


def _certs(owner: str, kind: str, certs: list[Certificate]) -> list[Watched]:
    return [Watched(owner, kind, c.subject, c.serial, c.not_after) for c in certs]


def _crls(owner: str, store: TrustStore) -> list[Watched]:
    return [Watched(owner, "crl", crl.issuer, "", crl.next_update) for crl in store.crls if crl.next_update]


def watched(config: GatewayConfig, signing: list[tuple[str, Certificate]], trust: TrustStore | None
            ) -> list[Watched]:
    """Every certificate and CRL date the gateway depends on; files that cannot be read are left out
    (start-up has refused them already, see ``transport_problems``)."""
    base = config.directory
    out = [Watched(owner, "signing" if owner == "gateway" else "trust-store" if owner == "trust-store"
                   else "participant-signing", c.subject, c.serial, c.not_after) for owner, c in signing]
    if trust is not None:
        out += _crls("trust-store", trust)
    s = config.settings
    for listener, tls in (("api", s.api.tls), ("hl7", s.hl7.tls if s.hl7.enabled else None)):
        if tls is None:
            continue
        out += _watch_pairs(f"gateway:{listener}", "tls-server", [tls, *([tls.gost] if tls.gost else [])], base)
        if tls.client_ca:
            try:
                store = client_trust(base, tls.client_ca)
            except TlsConfigError:
                continue
            out += _certs(f"clients:{listener}", "tls-client-ca", store.anchors)
            out += _crls(f"clients:{listener}", store)
    for p in config.participants.values():
        for entry in p.credentials.client_certificates:
            if entry.file:
                try:
                    out += _certs(p.mnemonic, "client-certificate", load_certificates(resolve(base, entry.file))[:1])
                except TlsConfigError:
                    pass
    seen: set[str] = set()
    for _, _, channel in channels(config):
        outbound = channel.tls
        if outbound is None or outbound.model_dump_json() in seen:
            continue
        seen.add(outbound.model_dump_json())
        out += _watch_channel(channel, outbound, base)
    return out


def _watch_pairs(owner: str, kind: str, pairs: list[KeyPair | ServerTls], base: Path) -> list[Watched]:
    out: list[Watched] = []
    for pair in pairs:
        try:
            out += _certs(owner, kind, certificates_of(pair, base))
        except TlsConfigError:
            pass
    return out


def _watch_channel(channel: Channel, tls: ClientTls, base: Path) -> list[Watched]:
    owner = f"channel:{channel.name}"
    out = _watch_pairs(owner, "channel-client", [tls], base) if tls.given else []
    for entry in tls.ca:
        try:
            out += _certs(owner, "channel-ca", load_certificates(resolve(base, entry)))
        except TlsConfigError:
            pass
    return out


def expiring(items: list[Watched], within: dt.timedelta = WARN_WITHIN, at: dt.datetime | None = None
             ) -> list[Watched]:
    limit = within.total_seconds()
    return [w for w in items if w.seconds_left(at) < limit]

"""MLLP's transport security and pacing: TLS with a client certificate per lab, and a lab's rate limit.

A connection's certificate is checked once it is up: one the listener's CA store does not
vouch for (untrusted, expired, not yet valid, revoked) or that belongs to no participant
closes the connection, audited with the reason. Whether a message's lab had to present
one, and this one, is decided per message once MSH-4 names the lab (an AR that says so).

Rate limits slow a lab down rather than cut it off: its ACK is held back for as long as
its limit asks (``Intake.pace``). An HL7 sender waits for each ACK before the next
message, so that is its rate; a dropped connection would only make it reconnect.
"""
from __future__ import annotations

import asyncio
import logging

from adapters.hl7v2.lab_intake import Outcome
from adapters.intake import Intake
from gateway import errors
from gateway.config import GatewayConfig
from gateway.credentials import CERTIFICATE_FIELD
from gateway.errors import Rejection
from gateway.masking import mask_text
from gateway.tls import PeerCertificate, ServerContext, server_context

log = logging.getLogger("zdravlink.hl7")


class MllpSecurity:
    def __init__(self, config: GatewayConfig, intake: Intake) -> None:
        s = config.settings.hl7
        self.tls: ServerContext | None = server_context(s.tls, config.directory) if s.tls else None
        self.intake = intake

    def on_connect(self, peer: str, cert: PeerCertificate | None) -> bool:
        """Keep the connection? Its certificate, if it sent one, must be trusted now and someone's."""
        if cert is None:
            return True
        auth = self.intake.pipeline.authenticator
        try:
            verified = auth.verified(cert)
            if verified is not None and auth.owner(verified) is None:
                raise Rejection(errors.CLIENT_CERTIFICATE_MISMATCH, f"the client certificate {verified.subject!r} "
                                "belongs to no participant", CERTIFICATE_FIELD, status=403)
        except Rejection as rej:
            log.info("MLLP connection from %s refused: %s %s", peer, rej.code, mask_text(rej.detail))
            self.intake.refused(rej, source="hl7", remote=peer.rsplit(":", 1)[0], caller=None, env=None)
            return False
        return True

    async def paced(self, outcome: Outcome, size: int) -> bytes:
        """The ACK, held back as long as the lab's rate limit asks."""
        if outcome.lab is not None:
            wait = self.intake.pace(outcome.lab, size)
            if wait > 0:
                await asyncio.sleep(wait)
        return outcome.ack
